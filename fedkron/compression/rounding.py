"""Unbiased stochastic rounding onto bitsandbytes code tables.

bitsandbytes only rounds to nearest on CPU. Stochastic rounding is written here against
bnb's own tables (same absmax scaling, same code indices, same nibble packing), so the
result decodes with bnb's deterministic ``dequantize_*`` functions unchanged.
"""

from __future__ import annotations

import torch


class CodeTable:
    """A bnb code table sorted for bracketing: value grid + the bnb index of each value."""

    def __init__(self, code: torch.Tensor) -> None:
        code = code.detach().to("cpu", torch.float32).flatten()
        values, first_index = [], []
        for value, index in sorted((v, i) for i, v in enumerate(code.tolist())):
            if values and value == values[-1]:
                continue  # e.g. fp4's +0 and -0: keep the first index bnb uses
            values.append(value)
            first_index.append(index)
        self.values = torch.tensor(values, dtype=torch.float32)
        self.indices = torch.tensor(first_index, dtype=torch.uint8)
        self.zero_index = int(self.indices[values.index(0.0)])

    def stochastic_indices(self, unit: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Round values in [-1, 1] to a neighbouring grid value so that E[decoded] = value.

        Values outside the grid's range (int8's dynamic map stops at -0.993) clamp to the end.
        """
        values = self.values
        unit = unit.clamp(values[0], values[-1])
        upper = torch.searchsorted(values, unit).clamp(1, values.numel() - 1)
        lower = upper - 1
        low, high = values[lower], values[upper]
        p_up = (unit - low) / (high - low)
        go_up = torch.rand(unit.shape, generator=generator) < p_up
        return self.indices[torch.where(go_up, upper, lower)]


def block_absmax(flat: torch.Tensor, block_size: int) -> torch.Tensor:
    """Per-block max |x| over a flat tensor, last block possibly short (bnb's scales)."""
    pad = (-flat.numel()) % block_size
    padded = torch.nn.functional.pad(flat, (0, pad))
    return padded.view(-1, block_size).abs().amax(dim=1)


def stochastic_codes(
    flat: torch.Tensor,
    table: CodeTable,
    block_size: int,
    generator: torch.Generator,
    absmax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-value code indices (uint8) and float32 block scales for a flat float32 tensor.

    ``absmax``: scales to round against (e.g. double-quantized ones, each ≥ its block's max |x|);
    by default each block's own max |x|.
    """
    if absmax is None:
        absmax = block_absmax(flat, block_size)
    per_value = absmax.repeat_interleave(block_size)[: flat.numel()]
    unit = torch.where(per_value > 0, flat / per_value.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return table.stochastic_indices(unit, generator), absmax


def pack_nibbles(indices: torch.Tensor, pad_index: int) -> torch.Tensor:
    """Two 4-bit indices per byte, first in the high nibble (bnb's order), odd tail padded."""
    if indices.numel() % 2:
        indices = torch.cat([indices, torch.tensor([pad_index], dtype=torch.uint8)])
    pairs = indices.view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]
