"""Double-quantized block scales (bitsandbytes' compress_statistics): bounds, bytes, bnb equality."""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import numpy as np
import pytest
import torch
from flwr.app import Message, Metadata, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedkron.compression import (
    ErrorFeedback,
    PayloadError,
    decode,
    from_records,
    get_codec,
    message_byte_figures,
    to_records,
)
from fedkron.compression.scales import DYNAMIC_MAP, dequantize_scales, quantize_scales_up

FOUR_BIT = ("nf4", "fp4")


def max_gap(table: torch.Tensor) -> float:
    values = torch.unique(table)
    return float((values[1:] - values[:-1]).max())


GAP8 = max_gap(DYNAMIC_MAP)


def block_absmax(flat: torch.Tensor, block: int) -> torch.Tensor:
    pad = (-flat.numel()) % block
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, block).abs().amax(1)


def scale_error_bound(absmax: torch.Tensor, gap: float) -> torch.Tensor:
    """Per block: ``gap`` × max |s − mean(s)| over the block's group of 256 scales (+ fp32 slop)."""
    offset = absmax.mean()
    centred = (absmax - offset).abs()
    pad = (-centred.numel()) % 256
    group = torch.nn.functional.pad(centred, (0, pad)).view(-1, 256).amax(1).repeat_interleave(256)[: absmax.numel()]
    return gap * group * (1 + 5e-3) + 2.0**-21 * (offset.abs() + group)


@st.composite
def states(draw):
    """1-3 tensors of 1-2500 values whose blocks span up to nine orders of magnitude."""
    out = {}
    for i in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 2500))
        values = draw(arrays(np.float32, (n,), elements=st.floats(-1, 1, width=32, allow_subnormal=False)))
        per_block = draw(arrays(np.float32, (-(-n // 64),), elements=st.sampled_from([1e-6, 1e-3, 1.0, 1e3])))
        out[f"layer.{i}.B"] = torch.from_numpy(values * np.repeat(per_block, 64)[:n])
    return out


@pytest.mark.parametrize("name", FOUR_BIT)
@pytest.mark.parametrize("block", [64, 256])
def test_double_quant_is_bitsandbytes_compress_statistics(name, block):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.01, 2, 5000)
    encoded = get_codec(name, block_size=block, double_quant=True).encode({"x": x})
    codes, state = bnbf.quantize_4bit(x, blocksize=block, quant_type=name, compress_statistics=True)
    assert state.nested
    expected_codes = np.concatenate([codes.flatten().numpy(), state.absmax.numpy()])
    assert np.array_equal(encoded.codes, expected_codes)
    assert np.array_equal(
        encoded.scales, np.concatenate([[state.offset.item()], state.state2.absmax.numpy()]).astype(np.float32)
    )
    assert torch.equal(decode(encoded)["x"], bnbf.dequantize_4bit(codes, quant_state=state).reshape(-1))


@pytest.mark.parametrize("name", FOUR_BIT)
@settings(max_examples=25, deadline=None)
@given(state=states())
def test_error_bounded_by_block_absmax_plus_scale_error(name, state):
    """|x − x̂| ≤ gap/2 · s_b + |ŝ_b − s_b| with |ŝ_b − s_b| ≤ gap8/2 · max |s − mean s| over the
    scale's group of 256: bnb's two roundings to nearest, nothing more."""
    codec = get_codec(name, double_quant=True)
    decoded = codec.decode(codec.encode(state))
    gap4 = max_gap(bnbf.get_4bit_type(name, device="cpu"))
    for key, x in state.items():
        absmax = block_absmax(x, 64)
        scale_err = scale_error_bound(absmax, GAP8 / 2) if absmax.numel() >= 3 else torch.zeros_like(absmax)
        bound = (gap4 / 2 * absmax * (1 + 5e-3) + scale_err).repeat_interleave(64)[: x.numel()] + 1e-30
        assert ((decoded[key] - x).abs() <= bound).all(), key


@settings(max_examples=40, deadline=None)
@given(absmax=arrays(np.float32, st.integers(1, 600), elements=st.sampled_from([0.0, 1e-6, 1e-3, 0.5, 1.0, 3e3])))
def test_rounded_up_scales_never_undershoot(absmax):
    s = torch.from_numpy(absmax)
    qscales, offset, absmax2, decoded = quantize_scales_up(s)
    assert torch.equal(decoded, dequantize_scales(qscales, offset, absmax2))  # what the receiver computes
    ulp = torch.finfo(torch.float32).eps * (s.abs() + offset.abs())
    assert (decoded >= s - ulp).all()
    assert (decoded - s <= 2 * scale_error_bound(s, GAP8)).all()


@pytest.mark.parametrize("name", FOUR_BIT)
def test_stochastic_rounding_stays_unbiased_with_double_quant(name):
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(1024, generator=gen) * 2 - 1) * torch.linspace(0.05, 1, 1024)
    plain = get_codec(name, double_quant=True)
    det_bias = (plain.decode(plain.encode({"x": x}))["x"] - x).abs().mean()
    codec = get_codec(name, stochastic=True, seed=5, double_quant=True)
    draws = 300
    mean = sum(codec.decode(codec.encode({"x": x}))["x"] for _ in range(draws)) / draws
    assert (mean - x).abs().mean() < 0.3 * det_bias


def test_bytes_by_hand_and_in_the_byte_figures():
    state = {"B": torch.randn(1000), "A": torch.randn(2, 2)}
    encoded = get_codec("nf4", double_quant=True).encode(state)
    # B: 1000 values = 500 code bytes + 16 blocks of 64 → 16 scale codes; 1 offset + 1 second-level absmax
    # A: 4 values = 2 code bytes, 1 block: below 3 blocks its scale stays float32
    assert (encoded.codes.nbytes, encoded.scales.size) == (500 + 16 + 2, 2 + 1)
    assert encoded.manifest["double_quant"] is True
    arrays_, config = to_records(encoded)
    metadata = Metadata(
        run_id=1, message_id="", src_node_id=7, dst_node_id=1, reply_to_message_id="",
        group_id="3", created_at=0.0, ttl=3600.0, message_type="train",
    )  # fmt: skip
    figures = message_byte_figures(Message(metadata=metadata, content=RecordDict({"u": arrays_, "c": config})))
    assert figures["payload"] == 518 + 12 + len(encoded.manifest_bytes) == encoded.nbytes
    assert figures["count_bytes"] == (128 + 518 + 5) + (128 + 12 + 6)
    back = from_records(arrays_, config, {"B": (1000,), "A": (2, 2)})
    assert back.nbytes == encoded.nbytes
    assert torch.equal(decode(back)["B"], decode(encoded)["B"])


@settings(max_examples=30, deadline=None)
@given(state=states(), block=st.sampled_from([32, 64, 128]))
def test_byte_accounting_is_exact(state, block):
    encoded = get_codec("fp4", block_size=block, double_quant=True).encode(state)
    code_bytes = floats = 0
    for x in state.values():
        packed, blocks = (x.numel() + 1) // 2, -(-x.numel() // block)
        dq = blocks >= 3
        code_bytes += packed + (blocks if dq else 0)
        floats += 1 + -(-blocks // 256) if dq else blocks
    assert (encoded.codes.nbytes, encoded.scales.size) == (code_bytes, floats)
    arrays_, config = to_records(encoded)
    assert (
        from_records(arrays_, config).nbytes
        == encoded.nbytes
        == code_bytes + 4 * floats + len(config["fedkron.manifest"])
    )


def test_a_large_tensor_costs_about_4_13_bits_per_value():
    x = {"w": torch.randn(1 << 20)}
    plain, dq = (get_codec("nf4", double_quant=d).encode(x) for d in (False, True))
    bits = 8 * (dq.codes.nbytes + dq.scales.nbytes) / (1 << 20)
    assert bits == pytest.approx(4 + 8 / 64 + 32 * (1 + 64) / (1 << 20))  # 4.1252
    assert 8 * (plain.codes.nbytes + plain.scales.nbytes) / (1 << 20) == 4.5
    errors = [float((decode(e)["w"] - x["w"]).norm() / x["w"].norm()) for e in (plain, dq)]
    assert errors[1] < 1.01 * errors[0]


@pytest.mark.parametrize("stochastic", [False, True])
def test_error_feedback_owes_the_scale_error_too(stochastic):
    gen = torch.Generator().manual_seed(1)
    codec, ef = get_codec("nf4", double_quant=True, stochastic=stochastic, seed=0), ErrorFeedback()
    sent = true = 0
    for _ in range(6):
        update = {
            "B1": torch.randn(96, 8, generator=gen) * torch.linspace(1e-3, 1, 8),
            "A": torch.randn(2, 2, generator=gen),
        }
        compensated = ef.compensate(update)
        encoded, decoded = ef.step(update, codec)
        assert torch.equal(decoded["B1"], decode(encoded)["B1"])  # the server sees the quantized scales
        residual = ef.state_dict()
        torch.testing.assert_close(residual["B1"], compensated["B1"] - decoded["B1"], rtol=0, atol=0)
        sent = sent + decoded["B1"]
        true = true + update["B1"]
    torch.testing.assert_close(sent, true - ef.state_dict()["B1"], atol=1e-5, rtol=1e-5)


def test_manifest_and_options_name_the_double_quantization():
    x = {"w": torch.randn(1000)}
    encoded = get_codec("fp4", block_size=128, double_quant=True).encode(x)
    assert encoded.codec_options == {"block_size": 128, "double_quant": True}
    again = get_codec(encoded.codec, **encoded.codec_options).encode(x)
    assert np.array_equal(again.codes, encoded.codes) and again.manifest == encoded.manifest
    flipped = dict(encoded.manifest, double_quant=False)
    with pytest.raises(PayloadError, match="implies"):
        decode(type(encoded)(encoded.codes, encoded.scales, flipped))
    int8 = get_codec("int8").encode(x)
    with pytest.raises(PayloadError, match="double_quant True invalid for int8"):
        decode(type(int8)(int8.codes, int8.scales, dict(int8.manifest, double_quant=True)))
    with pytest.raises(ValueError, match="under 1 %"):
        get_codec("int8", double_quant=True)
    with pytest.raises(ValueError, match="not fp16"):
        get_codec("fp16", double_quant=True)
