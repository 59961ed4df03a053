"""The update a client sends is computed on the CPU in fp32, whatever device trained the model."""

import pytest
import torch

from fedkron.client.worker import local_update


def _states(device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    global_state = {k: torch.randn(3, 4, generator=g) for k in ("a", "b", "frozen")}
    local = {k: (v + torch.randn(3, 4, generator=g)).to(device=device, dtype=dtype) for k, v in global_state.items()}
    return local, global_state


def test_update_is_local_minus_global_of_the_sent_factors_only_in_fp32_on_the_cpu():
    local, global_state = _states("cpu", torch.bfloat16)
    update = local_update(local, global_state, ["a", "b"])
    assert sorted(update) == ["a", "b"]  # a factor not sent this round is not in the update
    for k, u in update.items():
        assert u.dtype == torch.float32 and u.device.type == "cpu"
        torch.testing.assert_close(u, local[k].float() - global_state[k], rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the bug it guards was GPU-only)")
def test_update_of_a_model_trained_on_a_gpu_lands_on_the_cpu():
    local, global_state = _states("cuda", torch.float32)
    update = local_update(local, global_state, ["a"])
    assert update["a"].device.type == "cpu"
    torch.testing.assert_close(update["a"], local["a"].cpu() - global_state["a"])
