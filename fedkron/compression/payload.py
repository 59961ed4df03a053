"""The packed wire format: one code buffer, one scales buffer and a manifest.

Every tensor of a message shares the two buffers so per-array framing (about 128 bytes
of ``np.save`` header per Flower ``Array``) is paid twice per message, not per factor.
The manifest says how to cut the buffers again; it travels as deflated UTF-8 JSON,
because plain JSON names alone would cost more than the 0.1 bit/parameter that the
4-bit codecs leave for metadata on small adapters.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass

import numpy as np

FORMAT_NAME = "fedkron.compression"
FORMAT_VERSION = 1

#: Bits each parameter occupies in the code buffer, per codec.
CODE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "nf4": 4, "fp4": 4}
#: Block sizes bitsandbytes documents for each quantized codec (float codecs have none).
BLOCK_SIZES = {
    "int8": (64, 128, 256, 512, 1024, 2048, 4096),
    "nf4": (32, 64, 128, 256, 512, 1024, 2048, 4096),
    "fp4": (32, 64, 128, 256, 512, 1024, 2048, 4096),
}
SOURCE_DTYPES = ("float32", "float16", "bfloat16", "float64")

_MANIFEST_KEYS = {"format", "version", "codec", "block_size", "tensors"}
_MAX_MANIFEST_BYTES = 8 << 20  # inflated size; bounds a hostile deflate stream
_MAX_NAME_CHARS = 512
_MAX_NDIM = 16


class PayloadError(ValueError):
    """A payload that cannot be decoded as it claims (corrupt, tampered or foreign)."""


@dataclass(frozen=True)
class Layout:
    """Where each tensor lives in the two buffers, derived from a checked manifest."""

    codec: str
    block_size: int | None
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    code_offsets: tuple[int, ...]  # len(names) + 1, in bytes
    scale_offsets: tuple[int, ...]  # len(names) + 1, in float32 values


@dataclass(frozen=True, eq=False)
class Encoded:
    """An encoded message payload: what a codec produces and what travels."""

    codes: np.ndarray  # uint8, 1-D
    scales: np.ndarray  # float32, 1-D, empty for float codecs
    manifest: dict

    @property
    def codec(self) -> str:
        return str(self.manifest.get("codec"))

    @property
    def manifest_bytes(self) -> bytes:
        return dump_manifest(self.manifest)

    @property
    def nbytes(self) -> int:
        """Codes + scales + manifest bytes, i.e. what the payload costs on the wire."""
        return int(self.codes.nbytes + self.scales.nbytes + len(self.manifest_bytes))

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for _, shape, _ in self.manifest.get("tensors", []))


def segment_sizes(codec: str, block_size: int | None, numel: int) -> tuple[int, int]:
    """(code bytes, number of float32 scales) one tensor of ``numel`` values takes."""
    code_bytes = (numel * CODE_BITS[codec] + 7) // 8
    n_scales = 0 if block_size is None else -(-numel // block_size)
    return code_bytes, n_scales


def build_manifest(codec: str, block_size: int | None, entries: list[tuple[str, tuple[int, ...], str]]) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "codec": codec,
        "block_size": block_size,
        "tensors": [[name, list(shape), dtype] for name, shape, dtype in entries],
    }


def dump_manifest(manifest: dict) -> bytes:
    text = json.dumps(manifest, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return zlib.compress(text.encode("utf-8"), 9)


def load_manifest(data: bytes) -> dict:
    """Inflate and parse a manifest, refusing oversized or non-JSON input."""
    if not isinstance(data, (bytes, bytearray)):
        raise PayloadError(f"fedkron.compression: manifest must be bytes, got {type(data).__name__}")
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(bytes(data), _MAX_MANIFEST_BYTES)
        if inflater.unconsumed_tail:
            raise PayloadError(f"fedkron.compression: manifest inflates beyond {_MAX_MANIFEST_BYTES} bytes")
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


def read_layout(manifest: object) -> Layout:
    """Check every manifest field and derive the buffer offsets from the shapes."""
    if not isinstance(manifest, dict) or set(manifest) != _MANIFEST_KEYS:
        keys = sorted(manifest) if isinstance(manifest, dict) else type(manifest).__name__
        raise PayloadError(f"fedkron.compression: manifest keys {keys} != {sorted(_MANIFEST_KEYS)}")
    if manifest["format"] != FORMAT_NAME:
        raise PayloadError(f"fedkron.compression: unknown payload format {manifest['format']!r}")
    version = manifest["version"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise PayloadError(f"fedkron.compression: unsupported format version {version!r} (this reader: {FORMAT_VERSION})")
    codec = manifest["codec"]
    if not isinstance(codec, str) or codec not in CODE_BITS:
        raise PayloadError(f"fedkron.compression: unknown codec {codec!r}; known: {sorted(CODE_BITS)}")
    block_size = manifest["block_size"]
    allowed = BLOCK_SIZES.get(codec)
    if allowed is None and block_size is not None:
        raise PayloadError(f"fedkron.compression: codec {codec} has no blocks, manifest says {block_size!r}")
    if allowed is not None and (type(block_size) is not int or block_size not in allowed):
        raise PayloadError(f"fedkron.compression: block size {block_size!r} invalid for {codec}; allowed {allowed}")
    tensors = manifest["tensors"]
    if not isinstance(tensors, list):
        raise PayloadError("fedkron.compression: manifest 'tensors' must be a list")
    names, shapes, dtypes = [], [], []
    code_offsets, scale_offsets = [0], [0]
    for i, entry in enumerate(tensors):
        name, shape, dtype = _check_entry(i, entry)
        if name in names:
            raise PayloadError(f"fedkron.compression: tensor name {name!r} appears twice")
        code_bytes, n_scales = segment_sizes(codec, block_size, math.prod(shape))
        names.append(name)
        shapes.append(shape)
        dtypes.append(dtype)
        code_offsets.append(code_offsets[-1] + code_bytes)
        scale_offsets.append(scale_offsets[-1] + n_scales)
    return Layout(codec, block_size, tuple(names), tuple(shapes), tuple(dtypes), tuple(code_offsets), tuple(scale_offsets))


def _check_entry(index: int, entry: object) -> tuple[str, tuple[int, ...], str]:
    if not (isinstance(entry, list) and len(entry) == 3):
        raise PayloadError(f"fedkron.compression: tensor entry {index} must be [name, shape, dtype]")
    name, shape, dtype = entry
    if not isinstance(name, str) or not 0 < len(name) <= _MAX_NAME_CHARS:
        raise PayloadError(f"fedkron.compression: tensor entry {index} has a bad name {name!r}")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_NDIM
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise PayloadError(f"fedkron.compression: tensor {name!r} has a bad shape {shape!r}")
    if dtype not in SOURCE_DTYPES:
        raise PayloadError(f"fedkron.compression: tensor {name!r} has dtype {dtype!r}; known: {SOURCE_DTYPES}")
    return name, tuple(shape), dtype


def check_buffers(layout: Layout, codes: object, scales: object) -> None:
    """Buffers must have the dtypes and exact lengths the manifest implies, and sane scales."""
    for label, arr, dtype, expected in (
        ("codes", codes, np.uint8, layout.code_offsets[-1]),
        ("scales", scales, np.float32, layout.scale_offsets[-1]),
    ):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype) or arr.ndim != 1:
            got = f"{arr.dtype}{list(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise PayloadError(f"fedkron.compression: {label} must be a 1-D {np.dtype(dtype)} array, got {got}")
        if arr.size != expected:
            raise PayloadError(
                f"fedkron.compression: {label} holds {arr.size} values, manifest ({layout.codec}, "
                f"{len(layout.names)} tensors) implies {expected}"
            )
    if scales.size and not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise PayloadError("fedkron.compression: scales contain negative or non-finite values")


def checked_layout(encoded: Encoded) -> Layout:
    """The layout of ``encoded`` after all consistency checks, or a PayloadError."""
    if not isinstance(encoded, Encoded):
        raise TypeError(f"fedkron.compression: expected Encoded, got {type(encoded).__name__}")
    layout = read_layout(encoded.manifest)
    check_buffers(layout, encoded.codes, encoded.scales)
    return layout
