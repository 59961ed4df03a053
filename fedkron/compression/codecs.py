"""Codecs for adapter-factor updates: float casts and bitsandbytes blockwise quantizers.

Each tensor is quantized with its own blocks (a 2x2 Kronecker factor must not share an
absmax with a 256x8 one), then all codes go into one buffer and all scales into another.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextlib import contextmanager

import bitsandbytes.functional as bnbf
import numpy as np
import torch

from .manifest import DOUBLE_QUANT_CODECS, tensor_plan
from .payload import BLOCK_SIZES, CODE_BITS, Encoded, PayloadError, build_manifest, checked_layout
from .rounding import CodeTable, block_absmax, pack_nibbles, stochastic_codes
from .scales import dequantize_scales, pack_quantized_scales, quantize_scales, quantize_scales_up

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
}
_DEFAULT_BLOCK = {"int8": 256, "nf4": 64, "fp4": 64}


class Codec(ABC):
    """Encodes a name → tensor mapping into one packed :class:`Encoded` payload and back."""

    name: str
    block_size: int | None = None
    double_quant: bool = False

    def encode(self, state: Mapping[str, torch.Tensor]) -> Encoded:
        entries, code_parts, scale_parts = [], [], []
        with _one_thread():
            for name, flat, shape, dtype in _flatten_state(state):
                if flat.numel():
                    codes, scales = self._encode_flat(name, flat)
                else:
                    codes, scales = np.zeros(0, np.uint8), np.zeros(0, np.float32)
                entries.append((name, shape, dtype))
                code_parts.append(codes)
                scale_parts.append(scales)
        codes = np.concatenate(code_parts) if code_parts else np.zeros(0, np.uint8)
        scales = np.concatenate(scale_parts) if scale_parts else np.zeros(0, np.float32)
        manifest = build_manifest(self.name, self.block_size, entries, self.double_quant)
        return Encoded(codes, scales.astype(np.float32, copy=False), manifest)

    def decode(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        """Float32 tensors in manifest order; raises PayloadError before returning anything partial.

        Work is linear in the payload: the layout is checked once per ``Encoded`` and each
        tensor decodes its own segments.
        """
        layout = checked_layout(encoded)
        if layout.codec != self.name:
            raise PayloadError(f"fedkron.compression: payload was encoded with {layout.codec}, not {self.name}")
        try:
            return self._decode_all(layout, encoded)
        except PayloadError:
            raise
        except Exception as err:  # a checked layout should not fail here; never let it escape as another type
            raise PayloadError(f"fedkron.compression: payload does not decode ({type(err).__name__}: {err})") from err

    def _decode_all(self, layout, encoded: Encoded) -> dict[str, torch.Tensor]:
        codes = torch.from_numpy(np.array(encoded.codes, dtype=np.uint8, copy=True))
        scales = torch.from_numpy(np.array(encoded.scales, dtype=np.float32, copy=True))
        out: dict[str, torch.Tensor] = {}
        with _one_thread():
            for i, (name, shape) in enumerate(zip(layout.names, layout.shapes)):
                numel = math.prod(shape)
                if not numel:
                    out[name] = torch.zeros(shape)
                    continue
                packed, _, dq = tensor_plan(layout.codec, layout.block_size, layout.double_quant, numel)
                seg_codes = codes[layout.code_offsets[i] : layout.code_offsets[i + 1]]
                seg_scales = scales[layout.scale_offsets[i] : layout.scale_offsets[i + 1]]
                if dq:
                    seg_scales = dequantize_scales(seg_codes[packed:], seg_scales[0], seg_scales[1:])
                    seg_codes = seg_codes[:packed]
                flat = self._decode_flat(seg_codes, seg_scales, numel, layout.block_size)
                if not torch.isfinite(flat).all():
                    raise PayloadError(f"fedkron.compression: tensor {name!r} decodes to non-finite values")
                out[name] = flat.reshape(shape)
        return out

    @abstractmethod
    def _encode_flat(self, name: str, flat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """uint8 bytes and float32 values one flat, non-empty float32 tensor adds to the two buffers."""

    @abstractmethod
    def _decode_flat(
        self, codes: torch.Tensor, scales: torch.Tensor, numel: int, block_size: int | None
    ) -> torch.Tensor:
        """Flat float32 values from one tensor's codes and float32 block scales (numel > 0)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, block_size={self.block_size})"


class FloatCodec(Codec):
    """Plain casts; fp32 is exact, fp16/bf16 round to nearest."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype

    def _encode_flat(self, name, flat):
        cast = flat.to(self.dtype)
        if not torch.isfinite(cast).all():
            raise ValueError(
                f"fedkron.compression: tensor {name!r} overflows {self.name} (max |x| = {flat.abs().max():.4g})"
            )
        return cast.view(torch.uint8).numpy(), np.zeros(0, np.float32)

    def _decode_flat(self, codes, scales, numel, block_size):
        return codes.view(self.dtype).float()


class _BlockCodec(Codec):
    """Shared part of the bitsandbytes blockwise codecs: block size, stochastic rounding and
    double-quantized scales (a tensor's codes, then its scale codes; see ``segment_sizes``)."""

    table: CodeTable

    def __init__(self, name: str, block_size: int, stochastic: bool, seed: int | None, double_quant: bool) -> None:
        if block_size not in BLOCK_SIZES[name]:
            raise ValueError(
                f"fedkron.compression: block_size {block_size} invalid for {name}; allowed {BLOCK_SIZES[name]}"
            )
        self.name, self.block_size, self.stochastic, self.double_quant = name, block_size, stochastic, double_quant
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def _encode_flat(self, name, flat):
        _, _, dq = tensor_plan(self.name, self.block_size, self.double_quant, flat.numel())
        if not self.stochastic:
            return self._nearest(flat, dq)
        if not dq:
            indices, absmax = stochastic_codes(flat, self.table, self.block_size, self.generator)
            return self._pack(indices), absmax.float().numpy()
        # scales first, rounded up, then codes against the decoded scales: E[decoded] = x still
        qscales, offset, absmax2, decoded = quantize_scales_up(block_absmax(flat, self.block_size))
        indices, _ = stochastic_codes(flat, self.table, self.block_size, self.generator, absmax=decoded)
        scale_bytes, floats = pack_quantized_scales(qscales, offset, absmax2)
        return np.concatenate([self._pack(indices), scale_bytes]), floats

    def _nearest(self, flat: torch.Tensor, dq: bool) -> tuple[np.ndarray, np.ndarray]:
        """Round to nearest with bitsandbytes (scales double-quantized when ``dq``)."""
        raise NotImplementedError

    def _pack(self, indices: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, block_size={self.block_size}, "
            f"stochastic={self.stochastic}, double_quant={self.double_quant})"
        )


class Int8Codec(_BlockCodec):
    """bitsandbytes' 8-bit dynamic map, one float32 absmax per block."""

    def __init__(self, block_size: int, stochastic: bool, seed: int | None, double_quant: bool = False) -> None:
        super().__init__("int8", block_size, stochastic, seed, double_quant)
        self.code = bnbf.create_dynamic_map(signed=True).to("cpu")
        self.table = CodeTable(self.code)

    def _nearest(self, flat, dq):
        codes, state = bnbf.quantize_blockwise(flat, code=self.code, blocksize=self.block_size)
        if not dq:
            return codes.numpy(), state.absmax.float().numpy()
        scale_bytes, floats = pack_quantized_scales(*quantize_scales(state.absmax.float()))
        return np.concatenate([codes.numpy(), scale_bytes]), floats

    def _pack(self, indices):
        return indices.numpy()

    def _decode_flat(self, codes, scales, numel, block_size):
        return bnbf.dequantize_blockwise(codes, absmax=scales, code=self.code, blocksize=block_size)


class FourBitCodec(_BlockCodec):
    """bitsandbytes nf4 / fp4: two codes per byte, one float32 absmax per block (or, with
    ``double_quant``, bnb's ``compress_statistics``: one uint8 per block + offset + absmax per 256)."""

    def __init__(
        self, name: str, block_size: int, stochastic: bool, seed: int | None, double_quant: bool = False
    ) -> None:
        super().__init__(name, block_size, stochastic, seed, double_quant)
        self.table = CodeTable(bnbf.get_4bit_type(name, device="cpu"))

    def _nearest(self, flat, dq):
        codes, state = bnbf.quantize_4bit(flat, blocksize=self.block_size, quant_type=self.name, compress_statistics=dq)
        codes = codes.flatten().numpy()
        if not dq:
            return codes, state.absmax.float().numpy()
        scale_bytes, floats = pack_quantized_scales(state.absmax, state.offset, state.state2.absmax)
        return np.concatenate([codes, scale_bytes]), floats

    def _pack(self, indices):
        return pack_nibbles(indices, self.table.zero_index).numpy()

    def _decode_flat(self, codes, scales, numel, block_size):
        # Decode the padded even length: bnb sends odd lengths to a torch.compile'd fallback
        # that recompiles per shape (measured 0.9-2.9 s per call). Block sizes are even, so
        # the pad nibble never adds a block.
        even = numel + numel % 2
        state = bnbf.QuantState(
            absmax=scales, shape=torch.Size([even]), dtype=torch.float32, blocksize=block_size, quant_type=self.name
        )
        return bnbf.dequantize_4bit(codes.view(-1, 1), quant_state=state).reshape(even)[:numel]


def get_codec(
    name: str,
    *,
    block_size: int | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    double_quant: bool = False,
) -> Codec:
    """A codec by name: fp32, fp16, bf16, int8 (block 256), nf4 / fp4 (block 64).

    ``block_size`` is ignored by the float codecs; ``stochastic`` (unbiased rounding,
    drawn from a generator seeded by ``seed``) only exists for int8/nf4/fp4;
    ``double_quant`` (8-bit block scales, ~4.13 instead of 4.5 bits/param) for nf4/fp4.
    """
    if name not in CODE_BITS:
        raise ValueError(f"fedkron.compression: unknown codec {name!r}; valid: {', '.join(CODE_BITS)}")
    if double_quant and name not in DOUBLE_QUANT_CODECS:
        raise ValueError(
            f"fedkron.compression: double_quant applies to {'/'.join(DOUBLE_QUANT_CODECS)}, not {name}"
            + (" (it would save under 1 % of int8's 8.1 bits/param)" if name == "int8" else "")
        )
    if name in ("fp32", "fp16", "bf16"):
        if stochastic:
            raise ValueError(f"fedkron.compression: stochastic rounding applies to int8/nf4/fp4, not {name}")
        return FloatCodec(name, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name])
    block = _DEFAULT_BLOCK[name] if block_size is None else block_size
    if name == "int8":
        return Int8Codec(block, bool(stochastic), seed)
    return FourBitCodec(name, block, bool(stochastic), seed, bool(double_quant))


def decode(encoded: Encoded) -> dict[str, torch.Tensor]:
    """Decode with whatever codec the (checked) manifest names; for servers facing mixed clients."""
    layout = checked_layout(encoded)
    return get_codec(layout.codec).decode(encoded)


@contextmanager
def _one_thread():
    """Run bnb's CPU kernels single-threaded: they share torch's OpenMP pool, and on a busy
    machine (many Ray actors) a 256-value call measured 14 ms with 2 threads vs 0.14 ms with 1."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _flatten_state(state: Mapping[str, torch.Tensor]):
    """Yield (name, flat float32 tensor, shape, source dtype name), refusing what cannot travel."""
    if not isinstance(state, Mapping):
        raise TypeError(f"fedkron.compression: state must be a mapping of name -> tensor, got {type(state).__name__}")
    for name, tensor in state.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"fedkron.compression: tensor names must be non-empty strings, got {name!r}")
        if not isinstance(tensor, torch.Tensor) or tensor.dtype not in _DTYPE_NAMES:
            got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise TypeError(f"fedkron.compression: tensor {name!r} must be a float tensor, got {got}")
        flat = tensor.detach().to("cpu", torch.float32).reshape(-1).contiguous()
        if not torch.isfinite(flat).all():
            raise ValueError(f"fedkron.compression: tensor {name!r} {tuple(tensor.shape)} has non-finite values")
        yield name, flat, tuple(tensor.shape), _DTYPE_NAMES[tensor.dtype]
