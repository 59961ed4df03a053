"""The manifest: what a payload's two buffers hold, checked in one linear pass.

It travels as deflated UTF-8 JSON, because plain JSON names alone would cost more than the
0.1 bit/parameter that the 4-bit codecs leave for metadata on small adapters. A receiver that
knows what it expects passes ``expected`` (name → shape): the inflated size is then bounded by
what those entries can take, and the first name/shape that differs is refused before any
array buffer is touched.
"""

from __future__ import annotations

import json
import math
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

FORMAT_NAME = "fedkron.compression"
#: 2: ``double_quant`` key; quantized block scales share the code buffer. Version 1 is refused.
FORMAT_VERSION = 2

#: Bits each parameter occupies in the code buffer, per codec.
CODE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "nf4": 4, "fp4": 4}
#: Block sizes bitsandbytes documents for each quantized codec (float codecs have none).
BLOCK_SIZES = {
    "int8": (64, 128, 256, 512, 1024, 2048, 4096),
    "nf4": (32, 64, 128, 256, 512, 1024, 2048, 4096),
    "fp4": (32, 64, 128, 256, 512, 1024, 2048, 4096),
}
#: Codecs whose block scales may be double-quantized. int8 is left out: on real MiniLM updates it
#: saved 0.06-0.08 of 8.1-8.2 bits/param (< 1 %) for +0.5-1.2 % relative error.
DOUBLE_QUANT_CODECS = ("nf4", "fp4")
#: Second-level block of the double quantization (bitsandbytes' ``compress_statistics``).
SCALE_BLOCK = 256
#: A tensor's scales are double-quantized only from this many blocks: below it one offset and
#: one second-level absmax (8 bytes) cost more than the 3 bytes saved per block.
DQ_MIN_BLOCKS = 3
SOURCE_DTYPES = ("float32", "float16", "bfloat16", "float64")

_MANIFEST_KEYS = {"format", "version", "codec", "block_size", "double_quant", "tensors"}
MAX_MANIFEST_BYTES = 8 << 20  # inflated size; bounds a hostile deflate stream
_MAX_NAME_CHARS = 512
_MAX_NDIM = 16
_BOUND_FIXED = 512  # inflated bytes of everything but the tensor entries, with room to spare
_SIZES_KEPT = 128  # manifests whose buffer sizes are remembered (byte figures after from_records)
_SIZES_MAX_BYTES = 1 << 20  # ... when their deflated bytes are at most this long


class PayloadError(ValueError):
    """A payload that cannot be decoded as it claims (corrupt, tampered or foreign)."""


@dataclass(frozen=True)
class Layout:
    """Where each tensor lives in the two buffers, derived from a checked manifest."""

    codec: str
    block_size: int | None
    double_quant: bool
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    code_offsets: tuple[int, ...]  # len(names) + 1, in bytes
    scale_offsets: tuple[int, ...]  # len(names) + 1, in float32 values


def tensor_plan(codec: str, block_size: int | None, double_quant: bool, numel: int) -> tuple[int, int, bool]:
    """(packed code bytes, blocks, whether the block scales are double-quantized) of one tensor."""
    code_bytes = (numel * CODE_BITS[codec] + 7) // 8
    n_blocks = 0 if block_size is None else -(-numel // block_size)
    return code_bytes, n_blocks, bool(double_quant) and n_blocks >= DQ_MIN_BLOCKS


def segment_sizes(codec: str, block_size: int | None, numel: int, double_quant: bool = False) -> tuple[int, int]:
    """(bytes in the code buffer, float32 values in the scale buffer) of one tensor.

    Plain: packed codes | one float32 absmax per block. Double-quantized: packed codes followed
    by one uint8 code per block | the float32 offset followed by one absmax per 256 blocks.
    """
    code_bytes, n_blocks, dq = tensor_plan(codec, block_size, double_quant, numel)
    if dq:
        return code_bytes + n_blocks, 1 + -(-n_blocks // SCALE_BLOCK)
    return code_bytes, n_blocks


def build_manifest(
    codec: str, block_size: int | None, entries: list[tuple[str, tuple[int, ...], str]], double_quant: bool = False
) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "codec": codec,
        "block_size": block_size,
        "double_quant": bool(double_quant),
        "tensors": [[name, list(shape), dtype] for name, shape, dtype in entries],
    }


def dump_manifest(manifest: dict) -> bytes:
    text = json.dumps(manifest, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return zlib.compress(text.encode("utf-8"), 9)


def manifest_bound(expected: Mapping[str, tuple[int, ...]]) -> int:
    """Most inflated bytes a manifest of exactly these entries can take (JSON escapes included)."""
    total = _BOUND_FIXED
    for name, shape in expected.items():
        total += 6 * len(name.encode("utf-8")) + 32 + sum(len(str(d)) + 1 for d in shape)
    return min(total, MAX_MANIFEST_BYTES)


def load_manifest(data: object, max_bytes: int = MAX_MANIFEST_BYTES) -> dict:
    """Inflate (at most ``max_bytes``) and parse a manifest, refusing anything else."""
    if not isinstance(data, (bytes, bytearray)):
        raise PayloadError(f"fedkron.compression: manifest must be bytes, got {type(data).__name__}")
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(bytes(data), max_bytes)
        if inflater.unconsumed_tail:
            raise PayloadError(f"fedkron.compression: manifest inflates beyond {max_bytes} bytes")
        if not inflater.eof or inflater.unused_data:
            raise PayloadError("fedkron.compression: manifest is a truncated or padded deflate stream")
        manifest = json.loads(text.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError, RecursionError) as err:
        if isinstance(err, PayloadError):
            raise
        raise PayloadError(f"fedkron.compression: manifest is not deflated UTF-8 JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise PayloadError("fedkron.compression: manifest must be a JSON object")
    return manifest


def read_layout(manifest: object, expected: Mapping[str, tuple[int, ...]] | None = None) -> Layout:
    """Check every manifest field (against ``expected`` when given) and derive the buffer offsets.

    One pass, linear in the number of entries. With ``expected``, the entry count is compared
    before any entry is read, then each entry's name and shape (in any order).
    """
    codec, block_size, double_quant, tensors = _check_header(manifest)
    if expected is not None and len(tensors) != len(expected):
        raise PayloadError(f"fedkron.compression: manifest lists {len(tensors)} tensors, expected {len(expected)}")
    names, shapes, dtypes = [], [], []
    code_offsets, scale_offsets = [0], [0]
    seen: set[str] = set()
    for i, entry in enumerate(tensors):
        name, shape, dtype = _check_entry(i, entry)
        if name in seen:
            raise PayloadError(f"fedkron.compression: tensor name {name!r} appears twice")
        seen.add(name)
        if expected is not None:
            _compare(i, name, shape, expected)
        code_bytes, n_floats = segment_sizes(codec, block_size, math.prod(shape), double_quant)
        names.append(name)
        shapes.append(shape)
        dtypes.append(dtype)
        code_offsets.append(code_offsets[-1] + code_bytes)
        scale_offsets.append(scale_offsets[-1] + n_floats)
    return Layout(
        codec, block_size, double_quant, tuple(names), tuple(shapes), tuple(dtypes),
        tuple(code_offsets), tuple(scale_offsets),
    )  # fmt: skip


def _check_header(manifest: object) -> tuple[str, int | None, bool, list]:
    if not isinstance(manifest, dict) or set(manifest) != _MANIFEST_KEYS:
        keys = sorted(manifest) if isinstance(manifest, dict) else type(manifest).__name__
        raise PayloadError(f"fedkron.compression: manifest keys {keys} != {sorted(_MANIFEST_KEYS)}")
    if manifest["format"] != FORMAT_NAME:
        raise PayloadError(f"fedkron.compression: unknown payload format {manifest['format']!r}")
    version = manifest["version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise PayloadError(
            f"fedkron.compression: unsupported format version {version!r} (this reader: {FORMAT_VERSION})"
        )
    codec = manifest["codec"]
    if not isinstance(codec, str) or codec not in CODE_BITS:
        raise PayloadError(f"fedkron.compression: unknown codec {codec!r}; known: {sorted(CODE_BITS)}")
    block_size = manifest["block_size"]
    allowed = BLOCK_SIZES.get(codec)
    if allowed is None and block_size is not None:
        raise PayloadError(f"fedkron.compression: codec {codec} has no blocks, manifest says {block_size!r}")
    if allowed is not None and (type(block_size) is not int or block_size not in allowed):
        raise PayloadError(f"fedkron.compression: block size {block_size!r} invalid for {codec}; allowed {allowed}")
    double_quant = manifest["double_quant"]
    if type(double_quant) is not bool or (double_quant and codec not in DOUBLE_QUANT_CODECS):
        raise PayloadError(
            f"fedkron.compression: double_quant {double_quant!r} invalid for {codec} "
            f"(a bool, true only for {DOUBLE_QUANT_CODECS})"
        )
    tensors = manifest["tensors"]
    if not isinstance(tensors, list):
        raise PayloadError("fedkron.compression: manifest 'tensors' must be a list")
    return codec, block_size, double_quant, tensors


def _check_entry(index: int, entry: object) -> tuple[str, tuple[int, ...], str]:
    if not (isinstance(entry, list) and len(entry) == 3):
        raise PayloadError(f"fedkron.compression: tensor entry {index} must be [name, shape, dtype]")
    name, shape, dtype = entry
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME_CHARS:
        raise PayloadError(f"fedkron.compression: tensor entry {index} has a bad name {name!r}")
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(type(d) is int and d >= 0 for d in shape):
        raise PayloadError(f"fedkron.compression: tensor {name!r} has a bad shape {shape!r}")
    if dtype not in SOURCE_DTYPES:
        raise PayloadError(f"fedkron.compression: tensor {name!r} has dtype {dtype!r}; known: {SOURCE_DTYPES}")
    return name, tuple(shape), dtype


def _compare(index: int, name: str, shape: tuple[int, ...], expected: Mapping[str, tuple[int, ...]]) -> None:
    want = expected.get(name)
    if want is None:
        raise PayloadError(f"fedkron.compression: tensor entry {index} {name!r} is not an expected tensor")
    if shape != want:
        raise PayloadError(f"fedkron.compression: tensor {name!r} has shape {shape}, expected {want}")


_sizes: OrderedDict[bytes, tuple[int, int, int]] = OrderedDict()
_sizes_lock = threading.Lock()


def remember_sizes(raw: bytes, layout: Layout) -> None:
    """Keep (code bytes, scale values, tensor values) of a checked manifest so byte figures need not
    parse it again."""
    if isinstance(raw, bytes) and len(raw) <= _SIZES_MAX_BYTES:
        values = sum(math.prod(shape) for shape in layout.shapes)
        with _sizes_lock:
            _sizes[raw] = (layout.code_offsets[-1], layout.scale_offsets[-1], values)
            _sizes.move_to_end(raw)
            while len(_sizes) > _SIZES_KEPT:
                _sizes.popitem(last=False)


def _declared(raw: bytes) -> tuple[int, int, int]:
    with _sizes_lock:
        hit = _sizes.get(raw) if isinstance(raw, bytes) else None
    if hit is not None:
        return hit
    layout = read_layout(load_manifest(raw))
    remember_sizes(raw, layout)
    return layout.code_offsets[-1], layout.scale_offsets[-1], sum(math.prod(s) for s in layout.shapes)


def declared_sizes(raw: bytes) -> tuple[int, int]:
    """(code bytes, float32 scale values) the manifest ``raw`` declares; parsed once per manifest."""
    return _declared(raw)[:2]


def declared_values(raw: bytes) -> int:
    """How many tensor values (adapter parameters) the manifest ``raw`` declares: the values the
    payload carries, whatever the codec; parsed once per manifest."""
    return _declared(raw)[2]
