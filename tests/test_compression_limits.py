"""Receiving stays cheap and safe: linear work, checks against ``expected`` before allocation,
lying ``.npy`` headers refused, and every failure a PayloadError."""

from __future__ import annotations

import gc
import io
import json
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkron.compression import MANIFEST_KEY, PayloadError, decode, from_records, get_codec, to_records
from fedkron.compression.manifest import build_manifest, dump_manifest, load_manifest, read_layout


def tiny_state(n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(n)
    return {f"layer.{i}.f": torch.randn(1, generator=gen) for i in range(n)}


def shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def best_of(repeats: int, fn, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def npy_bytes(descr: str, shape: tuple[int, ...], data: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def fake_array(dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)


def test_decode_time_is_linear_in_the_number_of_entries():
    """10x the entries costs far less than the 100x of a quadratic decode (the duplicate check was
    quadratic: 20k tiny tensors took 6 s, most of it parsing the manifest three times). CPU time of
    this process, small and large runs interleaved, best of each; the bound (30x) sits between
    linear (10x) and quadratic (100x) with a 3x margin each way, so a loaded machine cannot fail it."""
    cases = {}
    for n in (300, 3000):
        state = tiny_state(n)
        cases[n] = (*to_records(get_codec("nf4").encode(state)), shapes(state))
    best = {(n, with_expected): float("inf") for n in cases for with_expected in (False, True)}
    gc.collect()
    for _ in range(5):
        for (n, with_expected), so_far in best.items():
            arrays, config, expected = cases[n]
            run = lambda a=arrays, c=config, e=(expected if with_expected else None): decode(from_records(a, c, e))  # noqa: E731
            took = best_of(1, run, time.process_time)
            best[n, with_expected] = min(so_far, took)
    for with_expected in (False, True):
        assert best[3000, with_expected] <= 30 * best[300, with_expected], best


def test_expected_names_and_shapes_are_checked_in_any_order():
    state = {"a": torch.randn(3, 4), "b": torch.randn(70), "c": torch.tensor(1.5)}
    arrays, config = to_records(get_codec("nf4", double_quant=True).encode(state))
    back = from_records(arrays, config, {"c": torch.Size([]), "b": (70,), "a": [3, 4]})
    assert list(decode(back)) == ["a", "b", "c"]
    for expected, match in [
        ({"a": (3, 4), "b": (70,)}, "lists 3 tensors, expected 2"),
        ({"a": (3, 4), "b": (70,), "c": (), "d": (1,)}, "lists 3 tensors, expected 4"),
        ({"a": (4, 3), "b": (70,), "c": ()}, r"tensor 'a' has shape \(3, 4\), expected \(4, 3\)"),
        ({"a": (3, 4), "B": (70,), "c": ()}, "entry 1 'b' is not an expected tensor"),
    ]:
        with pytest.raises(PayloadError, match=match):
            from_records(arrays, config, expected)
    with pytest.raises(TypeError, match="expected must map"):
        from_records(arrays, config, [("a", (3, 4))])


def big_fp32_claim(numel: int) -> tuple[ArrayRecord, ConfigRecord]:
    """A reply declaring one fp32 tensor of ``numel`` values whose arrays also claim that size
    (header and declared shape) but carry only a few bytes."""
    manifest = build_manifest("fp32", None, [("w", (numel,), "float32")])
    codes = fake_array("uint8", (4 * numel,), npy_bytes("|u1", (4 * numel,), b"\0" * 64))
    scales = Array(np.zeros(0, np.float32))
    return ArrayRecord({"codes": codes, "scales": scales}), ConfigRecord({MANIFEST_KEY: dump_manifest(manifest)})


@pytest.mark.parametrize(
    "expected, match",
    [({"w": (10,)}, "shape"), ({"v": (50_000_000,)}, "not an expected tensor"), (None, "data bytes after its header")],
)
def test_a_huge_declared_tensor_is_refused_without_allocating_it(expected, match):
    arrays, config = big_fp32_claim(50_000_000)  # 200 MB if anything believed it
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match=match):
            from_records(arrays, config, expected)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20


def test_a_real_big_payload_under_a_wrong_name_is_refused_before_its_arrays_are_read():
    state = {"w": torch.randn(2_000_000)}  # 8 MB of fp32 codes actually carried
    arrays, config = to_records(get_codec("fp32").encode(state))
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match="not an expected tensor"):
            from_records(arrays, config, {"v": (2_000_000,)})
        _, refused_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        decode(from_records(arrays, config, {"w": (2_000_000,)}))
        _, decode_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused_peak < 1 << 20
    # accepted: the arrays are viewed in place, then one copy of the codes and the float32 output
    assert decode_peak < 2.5 * 8_000_000


@pytest.mark.parametrize(
    "header, declared, match",
    [
        (("|u1", (10**12,)), None, "header says"),  # Array.numpy() would try to allocate a terabyte
        (("|u1", (2**62, 2**62)), None, "header says"),
        (("<f8", None), None, "header says"),
        (None, ("uint8", (10**12,)), r"declares uint8\[1000000000000\]"),
        (None, ("object", None), "declares object"),
    ],
)
def test_arrays_that_lie_about_their_size_are_refused(header, declared, match):
    arrays, config = to_records(get_codec("nf4").encode({"w": torch.randn(100)}))
    codes = arrays["codes"]
    descr, shape = header if header else ("|u1", None)
    data = npy_bytes(descr, shape or tuple(codes.shape), codes.data[128:]) if header else codes.data
    dtype, declared_shape = declared if declared else (codes.dtype, None)
    bad = fake_array(dtype, declared_shape or tuple(codes.shape), data)
    with pytest.raises(PayloadError, match=match):
        from_records(ArrayRecord({"codes": bad, "scales": arrays["scales"]}), config)


def test_trailing_or_missing_data_bytes_are_refused():
    arrays, config = to_records(get_codec("nf4").encode({"w": torch.randn(100)}))
    codes = arrays["codes"]
    for data in (codes.data + b"\0", codes.data[:-1], codes.data[:100], b"\x93NUMPY\x03\x00"):
        bad = fake_array(codes.dtype, tuple(codes.shape), data)
        with pytest.raises(PayloadError):
            from_records(ArrayRecord({"codes": bad, "scales": arrays["scales"]}), config)


def test_accepted_arrays_are_viewed_not_copied():
    arrays, config = to_records(get_codec("nf4").encode({"w": torch.randn(1000)}))
    encoded = from_records(arrays, config)
    assert not encoded.codes.flags.writeable  # a view over the received bytes
    assert np.shares_memory(encoded.codes, np.frombuffer(arrays["codes"].data, np.uint8))


def test_a_manifest_with_more_entries_than_expected_is_refused_before_it_is_parsed():
    expected = shapes(tiny_state(10))
    flood = build_manifest("fp32", None, [(f"layer.{i}.f", (1,), "float32") for i in range(30_000)])
    raw = dump_manifest(flood)
    arrays, _ = to_records(get_codec("fp32").encode(tiny_state(10)))
    config = ConfigRecord({MANIFEST_KEY: raw})
    with pytest.raises(PayloadError, match="inflates beyond"):
        from_records(arrays, config, expected)
    refuse = best_of(3, lambda: pytest.raises(PayloadError, from_records, arrays, config, expected))
    parse = best_of(1, lambda: read_layout(load_manifest(raw)))
    assert 10 * refuse < parse, (refuse, parse)
    # one entry too many fits within the bound: refused by count before any entry is read
    one_more = dump_manifest(build_manifest("fp32", None, [(n, (1,), "float32") for n in [*expected, "x"]]))
    with pytest.raises(PayloadError, match="lists 11 tensors, expected 10"):
        from_records(arrays, ConfigRecord({MANIFEST_KEY: one_more}), expected)


def test_legitimate_manifests_fit_the_expected_bound():
    """The bound never refuses what an honest sender writes, even for names JSON must escape."""
    names = ['quote"d', "back\\slash", "ctrl\x01\x02", "ünïcødé·层", "x" * 512]
    state = {name: torch.randn(3, 5) for name in names}
    for codec in ("fp32", "nf4"):
        arrays, config = to_records(get_codec(codec, double_quant=codec == "nf4").encode(state))
        assert list(decode(from_records(arrays, config, shapes(state)))) == names


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(["manifest", "codes", "scales"]),
    position=st.floats(0, 1),
    value=st.integers(0, 255),
    cut=st.booleans(),
    with_expected=st.booleans(),
)
def test_any_corruption_is_a_payload_error_or_decodes(target, position, value, cut, with_expected):
    state = {"a": torch.randn(2, 2), "b": torch.randn(300), "c": torch.randn(5)}
    arrays, config = to_records(get_codec("nf4", double_quant=True).encode(state))
    blobs = {"manifest": config[MANIFEST_KEY], "codes": arrays["codes"].data, "scales": arrays["scales"].data}
    blob = bytearray(blobs[target])
    index = min(int(position * len(blob)), len(blob) - 1)
    if cut:
        del blob[index:]
    else:
        blob[index] = value
    if target == "manifest":
        config = ConfigRecord({MANIFEST_KEY: bytes(blob)})
    else:
        old = arrays[target]
        arrays = ArrayRecord(
            {**{k: arrays[k] for k in arrays}, target: fake_array(old.dtype, tuple(old.shape), bytes(blob))}
        )
    try:
        out = decode(from_records(arrays, config, shapes(state) if with_expected else None))
    except PayloadError:
        return
    assert list(out) == list(state) and all(torch.isfinite(t).all() for t in out.values())


def test_a_manifest_full_of_wrong_types_is_a_payload_error():
    arrays, _ = to_records(get_codec("fp32").encode({"w": torch.zeros(2)}))
    good = build_manifest("fp32", None, [("w", (2,), "float32")])
    for edit in (
        {"tensors": {"w": 1}},
        {"tensors": [["w", "2", "float32"]]},
        {"tensors": [["w", [2**70], "float32"]]},
        {"double_quant": 1},
        {"double_quant": True},  # fp32 has no scales to quantize
        {"block_size": [64]},
    ):
        raw = zlib.compress(json.dumps({**good, **edit}).encode())
        with pytest.raises(PayloadError):
            from_records(arrays, ConfigRecord({MANIFEST_KEY: raw}), {"w": (2,)})
        with pytest.raises(PayloadError):
            from_records(arrays, ConfigRecord({MANIFEST_KEY: raw}))
