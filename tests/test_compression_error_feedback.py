"""Error feedback: what quantisation drops is owed, never lost."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from flwr.app import ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkron.compression import ErrorFeedback, get_codec


def update(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "A": torch.randn(2, 2, generator=gen),
        "B1": torch.randn(96, 8, generator=gen) * 1e-2,
        "B2": torch.randn(8, 50, generator=gen),
    }


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in state.values()])


@settings(max_examples=25, deadline=None)
@given(
    codec_name=st.sampled_from(["int8", "nf4", "fp4", "fp16"]), seed=st.integers(0, 10_000), rounds=st.integers(1, 12)
)
def test_sum_of_sent_equals_sum_of_updates_minus_current_residual(codec_name, seed, rounds):
    """Telescoping: Σ decoded_t = Σ u_t − e_k, so the total error is one residual, not k of them."""
    codec, ef = get_codec(codec_name), ErrorFeedback()
    sent = torch.zeros_like(flat(update(seed)))
    true = torch.zeros_like(sent)
    for t in range(rounds):
        u = update(seed + t)
        _, decoded = ef.step(u, codec)
        sent += flat(decoded)
        true += flat(u)
    residual = flat(ef.state_dict())
    torch.testing.assert_close(sent, true - residual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("codec_name", ["nf4", "fp4", "int8"])
def test_repeated_update_accumulated_error_goes_to_zero(codec_name):
    codec, ef, u = get_codec(codec_name), ErrorFeedback(), update(0)
    k = 40
    with_ef = torch.zeros_like(flat(u))
    relative = []
    for t in range(1, k + 1):
        with_ef += flat(ef.step(u, codec)[1])
        relative.append(float((with_ef - t * flat(u)).norm() / (t * flat(u)).norm()))
    without_ef = float((flat(codec.decode(codec.encode(u))) - flat(u)).norm() / flat(u).norm())  # same at every k
    assert relative[-1] < without_ef / 8  # the error no longer accumulates: it is spread over k rounds
    assert relative[-1] < relative[4] / 3
    assert ef.norm() > 0


def test_state_round_trips_through_safetensors_and_array_record():
    codec, ef = get_codec("nf4"), ErrorFeedback()
    ef.step(update(1), codec)
    expected = ef.compensate(update(2))
    for restore in (
        lambda sd: safetensors.torch.load(safetensors.torch.save(sd)),
        lambda sd: ArrayRecord(sd).to_torch_state_dict(),
    ):
        again = ErrorFeedback()
        again.load_state_dict(restore(ef.state_dict()))
        got = again.compensate(update(2))
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_mismatches_raise():
    ef = ErrorFeedback()
    ef.step(update(0), get_codec("int8"))
    with pytest.raises(KeyError, match="lacks tensors with a residual: \\['B2'\\]"):
        ef.compensate({k: v for k, v in update(1).items() if k != "B2"})
    with pytest.raises(ValueError, match="'A' has shape \\(4,\\), residual \\(2, 2\\)"):
        ef.compensate({**update(1), "A": torch.zeros(4)})
    with pytest.raises(ValueError, match="non-finite"):
        ErrorFeedback().load_state_dict({"A": torch.tensor([float("inf")])})
    with pytest.raises(TypeError, match="float tensor"):
        ErrorFeedback().load_state_dict({"A": torch.tensor([1])})


def test_fp32_leaves_no_residual():
    ef = ErrorFeedback()
    ef.step(update(0), get_codec("fp32"))
    assert ef.norm() == 0.0
