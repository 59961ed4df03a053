"""The packed wire format: one code buffer, one scales buffer and a manifest.

Every tensor of a message shares the two buffers so per-array framing (about 128 bytes
of ``np.save`` header per Flower ``Array``) is paid twice per message, not per factor.
The manifest (see :mod:`.manifest`) says how to cut the buffers again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .manifest import (  # noqa: F401  (re-exported: the format's names live here for callers)
    BLOCK_SIZES,
    CODE_BITS,
    DOUBLE_QUANT_CODECS,
    FORMAT_NAME,
    FORMAT_VERSION,
    SOURCE_DTYPES,
    Layout,
    PayloadError,
    build_manifest,
    dump_manifest,
    load_manifest,
    read_layout,
    segment_sizes,
)


@dataclass(frozen=True, eq=False)
class Encoded:
    """An encoded message payload: what a codec produces and what travels.

    Treat it as immutable: its checked layout and manifest bytes are cached on first use
    (``dataclasses.replace`` gives a fresh object with nothing cached).
    """

    codes: np.ndarray  # uint8, 1-D
    scales: np.ndarray  # float32, 1-D, empty for float codecs
    manifest: dict
    _layout: Layout | None = field(default=None, init=False, repr=False)
    _manifest_bytes: bytes | None = field(default=None, init=False, repr=False)

    @classmethod
    def checked(cls, codes: np.ndarray, scales: np.ndarray, manifest: dict, layout: Layout, raw: bytes) -> Encoded:
        """A received payload whose ``layout`` was checked against these buffers and whose
        manifest arrived as ``raw`` (counted as sent, not re-deflated)."""
        encoded = cls(codes, scales, manifest)
        object.__setattr__(encoded, "_layout", layout)
        object.__setattr__(encoded, "_manifest_bytes", bytes(raw))
        return encoded

    @property
    def codec(self) -> str:
        return str(self.manifest.get("codec"))

    @property
    def codec_options(self) -> dict:
        """``get_codec(encoded.codec, **encoded.codec_options)`` builds a codec that re-encodes alike."""
        layout = checked_layout(self)
        return {"block_size": layout.block_size, "double_quant": layout.double_quant}

    @property
    def manifest_bytes(self) -> bytes:
        if self._manifest_bytes is None:
            object.__setattr__(self, "_manifest_bytes", dump_manifest(self.manifest))
        return self._manifest_bytes

    @property
    def nbytes(self) -> int:
        """Codes + scales + manifest bytes, i.e. what the payload costs on the wire."""
        return int(self.codes.nbytes + self.scales.nbytes + len(self.manifest_bytes))

    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for shape in checked_layout(self).shapes)


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
    """The layout of ``encoded`` after all consistency checks (once per object), or a PayloadError."""
    if not isinstance(encoded, Encoded):
        raise TypeError(f"fedkron.compression: expected Encoded, got {type(encoded).__name__}")
    if encoded._layout is None:
        layout = read_layout(encoded.manifest)
        check_buffers(layout, encoded.codes, encoded.scales)
        object.__setattr__(encoded, "_layout", layout)
    return encoded._layout
