"""Double quantization of block scales, as bitsandbytes' ``compress_statistics`` (QLoRA).

The float32 absmax of each block is replaced by a uint8 code of its offset from the tensor's
mean absmax, blockwise over 256 scales with bnb's 8-bit dynamic map: 8.1 instead of 32 bits
per block. Decoding is bnb's own: ``dequantize_blockwise(codes, absmax2) + offset``.
"""

from __future__ import annotations

import bitsandbytes.functional as bnbf
import numpy as np
import torch

from .manifest import SCALE_BLOCK
from .rounding import CodeTable, block_absmax

DYNAMIC_MAP = bnbf.create_dynamic_map(signed=True).to("cpu")  # what quantize_blockwise uses by default
_TABLE = CodeTable(DYNAMIC_MAP)


def pack_quantized_scales(
    qscales: torch.Tensor, offset: torch.Tensor, absmax2: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 bytes for the code buffer, float32 [offset, absmax2...] for the scale buffer)."""
    floats = torch.cat([offset.reshape(1).float(), absmax2.reshape(-1).float()])
    return qscales.reshape(-1).to(torch.uint8).numpy(), floats.numpy()


def quantize_scales(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 codes, offset, second-level absmax) to nearest: bnb's ``compress_statistics`` steps."""
    offset = absmax.mean()
    qscales, state2 = bnbf.quantize_blockwise(absmax - offset, code=DYNAMIC_MAP, blocksize=SCALE_BLOCK)
    return qscales, offset, state2.absmax


def quantize_scales_up(absmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """As :func:`quantize_scales` but every decoded scale ≥ its absmax (up to one fp32 ulp at the
    very top of the map), so stochastic rounding against the decoded scale stays unbiased.

    Returns (codes, offset, absmax2, decoded scales).
    """
    offset = absmax.mean()
    centred = absmax - offset
    absmax2 = block_absmax(centred, SCALE_BLOCK)
    per_value = absmax2.repeat_interleave(SCALE_BLOCK)[: centred.numel()]
    unit = torch.where(per_value > 0, centred / per_value.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    values = _TABLE.values
    position = torch.searchsorted(values, unit.clamp(values[0], values[-1])).clamp_max(values.numel() - 1)
    for _ in range(2):  # fp32 rounding in decode can land one grid step short: step up where it did
        decoded = dequantize_scales(_TABLE.indices[position], offset, absmax2)
        short = (decoded < absmax) & (position < values.numel() - 1)
        if not short.any():
            break
        position = position + short.long()
    qscales = _TABLE.indices[position]
    return qscales, offset, absmax2, dequantize_scales(qscales, offset, absmax2)


def dequantize_scales(qscales: torch.Tensor, offset: torch.Tensor, absmax2: torch.Tensor) -> torch.Tensor:
    """Float32 block scales back from their codes: exactly what bnb's ``dequantize_4bit`` does for a nested state."""
    scales = bnbf.dequantize_blockwise(qscales, absmax=absmax2, code=DYNAMIC_MAP, blocksize=SCALE_BLOCK)
    scales += offset
    return scales.float()
