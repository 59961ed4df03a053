"""Malformed payloads, Flower records and byte figures of fedkron.compression."""

from __future__ import annotations

import copy
import io
import json
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto

from fedkron.compression import (
    MANIFEST_KEY,
    Encoded,
    PayloadError,
    decode,
    from_records,
    get_codec,
    message_byte_figures,
    record_byte_figures,
    to_records,
)


def small_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"l0.A": torch.randn(2, 2, generator=gen), "l0.B": torch.randn(70, 3, generator=gen), "s": torch.tensor(0.5)}


def make_message(content: RecordDict) -> Message:
    # Message(content, dst_node_id=, message_type=) needs a running app's TaskIdentity;
    # explicit metadata builds the same object outside one.
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=7,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="3",
        created_at=0.0,
        ttl=3600.0,
        message_type="train",
    )
    return Message(metadata=metadata, content=content)


@pytest.fixture(params=["nf4", "int8", "fp32"])
def encoded(request) -> Encoded:
    return get_codec(request.param).encode(small_state())


def tampered(encoded: Encoded, edit) -> Encoded:
    manifest = copy.deepcopy(encoded.manifest)
    edit(manifest)
    return replace(encoded, manifest=manifest)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.update(version=1), "unsupported format version 1"),
        (lambda m: m.update(version=True), "unsupported format version"),
        (lambda m: m.update(codec="int3"), "unknown codec 'int3'"),
        (lambda m: m.update(format="other"), "unknown payload format"),
        (lambda m: m.pop("block_size"), "manifest keys"),
        (lambda m: m.update(extra=1), "manifest keys"),
        (lambda m: m["tensors"][1].__setitem__(1, [71, 3]), "implies"),
        (lambda m: m["tensors"][1].__setitem__(1, [70, -3]), "bad shape"),
        (lambda m: m["tensors"][1].__setitem__(1, [70.0, 3]), "bad shape"),
        (lambda m: m["tensors"][1].__setitem__(2, "int64"), "dtype 'int64'"),
        (lambda m: m["tensors"][1].__setitem__(0, "l0.A"), "appears twice"),
        (lambda m: m["tensors"].pop(), "implies"),
        (lambda m: m["tensors"].append(["x", [1], "float32"]), "implies"),
    ],
)
def test_tampered_manifest_raises(encoded, edit, match):
    with pytest.raises(PayloadError, match=match):
        get_codec(encoded.codec).decode(tampered(encoded, edit))


def test_block_size_and_codec_swaps_raise():
    enc = get_codec("nf4").encode(small_state())
    with pytest.raises(PayloadError, match="block size 100 invalid"):
        decode(tampered(enc, lambda m: m.update(block_size=100)))
    with pytest.raises(PayloadError, match="codes holds"):
        decode(tampered(enc, lambda m: m.update(codec="int8", block_size=64)))  # same scales, twice the codes
    with pytest.raises(PayloadError, match="has no blocks"):
        decode(tampered(enc, lambda m: m.update(codec="fp16")))


def test_bad_buffers_raise(encoded):
    codec = get_codec(encoded.codec)
    with pytest.raises(PayloadError, match="codes holds"):
        codec.decode(replace(encoded, codes=encoded.codes[:-1]))
    with pytest.raises(PayloadError, match="codes holds"):
        codec.decode(replace(encoded, codes=np.concatenate([encoded.codes, np.zeros(1, np.uint8)])))
    with pytest.raises(PayloadError, match="1-D uint8"):
        codec.decode(replace(encoded, codes=encoded.codes.astype(np.int16)))
    with pytest.raises(PayloadError, match="1-D float32"):
        codec.decode(replace(encoded, scales=encoded.scales.astype(np.float64)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_non_finite_or_negative_scales_raise(bad):
    enc = get_codec("int8").encode(small_state())
    scales = enc.scales.copy()
    scales[-1] = bad
    with pytest.raises(PayloadError, match="scales contain"):
        decode(replace(enc, scales=scales))


def test_float_payload_with_nan_codes_raises_before_returning():
    enc = get_codec("fp32").encode(small_state())
    codes = enc.codes.copy()
    codes[-4:] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)  # last tensor only
    with pytest.raises(PayloadError, match="'s' decodes to non-finite"):
        decode(replace(enc, codes=codes))


def test_records_round_trip_through_protobuf(encoded):
    arrays, config = to_records(encoded)
    wire = message_to_proto(make_message(RecordDict({"update": arrays, "update.codec": config})))
    received = message_from_proto(wire).content
    back = from_records(received.array_records["update"], received.config_records["update.codec"])
    assert back.manifest == encoded.manifest and back.nbytes == encoded.nbytes
    codec = get_codec(encoded.codec)
    before, after = codec.decode(encoded), codec.decode(back)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_from_records_rejects_foreign_records():
    arrays, config = to_records(get_codec("nf4").encode(small_state()))
    with pytest.raises(PayloadError, match="no 'fedkron.manifest'"):
        from_records(arrays, ConfigRecord({"x": 1}))
    with pytest.raises(PayloadError, match="array record keys"):
        from_records(ArrayRecord({"codes": arrays["codes"]}), config)
    for garbage, match in [
        (b"not deflate", "not deflated"),
        (zlib.compress(b"[1, 2]"), "JSON object"),
        (zlib.compress(b'{"a": ')[:-3], "truncated"),
        (zlib.compress(b" " * (9 << 20)), "inflates beyond"),
    ]:
        with pytest.raises(PayloadError, match=match):
            from_records(arrays, ConfigRecord({MANIFEST_KEY: garbage}))
    with pytest.raises(PayloadError, match="ArrayRecord, ConfigRecord"):
        from_records(config, arrays)


def test_pickled_arrays_are_never_loaded():
    arrays, config = to_records(get_codec("nf4").encode(small_state()))
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    evil = Array(dtype="object", shape=(1,), stype="numpy.ndarray", data=buffer.getvalue())
    with pytest.raises(PayloadError, match="declares object"):
        from_records(ArrayRecord({"codes": evil, "scales": arrays["scales"]}), config)
    # declared as the manifest wants, but the bytes are a pickle: the .npy header gives it away
    disguised = Array(dtype="uint8", shape=tuple(arrays["codes"].shape), stype="numpy.ndarray", data=buffer.getvalue())
    with pytest.raises(PayloadError, match="header says object"):
        from_records(ArrayRecord({"codes": disguised, "scales": arrays["scales"]}), config)


def test_byte_figures_match_hand_computation():
    """fp32, one tensor of 3 values: every byte accounted for by hand."""
    enc = get_codec("fp32").encode({"w": torch.zeros(3)})
    manifest_json = b'{"format":"fedkron.compression","version":2,"codec":"fp32","block_size":null,"double_quant":false,"tensors":[["w",[3],"float32"]]}'  # noqa: E501
    manifest_len = len(zlib.compress(manifest_json, 9))
    assert json.loads(manifest_json) == enc.manifest
    assert enc.nbytes == 12 + 0 + manifest_len
    npy_header = 128  # np.save: magic + version + header dict padded to 128 bytes for 1-D arrays
    count_bytes = (npy_header + 12 + len("codes")) + (npy_header + 0 + len("scales"))
    arrays, config = to_records(enc)
    message = make_message(RecordDict({"update": arrays, "update.codec": config}))
    figures = message_byte_figures(message)
    assert figures["payload"] == 12 + manifest_len
    assert figures["count_bytes"] == count_bytes == 279
    # the protobuf adds tags, lengths, dtype/shape/stype fields and metadata on top of the data
    assert count_bytes + manifest_len < figures["serialized"] < count_bytes + manifest_len + 400
    assert figures["serialized"] == message_to_proto(message).ByteSize()
    pair = record_byte_figures(arrays, config)
    assert pair["payload"] == figures["payload"] and pair["count_bytes"] == figures["count_bytes"]
    assert pair["serialized"] < figures["serialized"]


def test_nf4_byte_figures_by_hand():
    enc = get_codec("nf4").encode({"x": torch.randn(100)})
    # 100 values: 50 bytes of packed nibbles, 2 blocks of 64 → 2 float32 scales
    assert (enc.codes.nbytes, enc.scales.nbytes) == (50, 8)
    arrays, config = to_records(enc)
    figures = message_byte_figures(
        make_message(RecordDict({"u": arrays, "c": config, "extra": ConfigRecord({"lr": 0.1})}))
    )
    assert figures["payload"] == 58 + len(enc.manifest_bytes) == enc.nbytes
    assert figures["count_bytes"] == (128 + 50 + 5) + (128 + 8 + 6)
