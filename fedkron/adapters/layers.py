"""Adapter layers: a frozen base layer plus small trainable factors, applied without forming ΔW.

Kron-LoRA computes ``x @ kron(A, B1·B2).T`` as (I⊗B2)·x, a ``(tokens, a_in, r)`` tensor, then
(A⊗B1) applied as one GEMM with the small ``d_out × a_in·r`` matrix A⊗B1 (for small a_in, the
paper's 2) or as an A-mix in rank space followed by B1. Both beat forming ΔW (d_out × d_in) and
cost about LoRA-8 here; measured alternatives (A-mix on the b_out side, einsum) were slower.
The forward only ever calls ``base_layer(x)``, so a bitsandbytes 4-bit base works too.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .shapes import KronShape


def base_layer_sizes(base: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of a Linear / GPT-2 Conv1D (weight stored d_in × d_out) / bitsandbytes
    Linear4bit or Linear8bitLt (nn.Linear subclasses whose packed weight has another shape: their
    ``out_features`` / ``in_features`` are the true sizes)."""
    if isinstance(base, Conv1D):
        d_in, d_out = base.weight.shape
        return int(d_out), int(d_in)
    if isinstance(base, nn.Linear):
        return int(base.out_features), int(base.in_features)
    raise TypeError(f"cannot adapt {type(base).__name__}: only nn.Linear and transformers Conv1D")


def quantized_kind(base: nn.Module) -> str | None:
    """ "Linear4bit" / "Linear8bitLt" for a bitsandbytes base (whatever its storage dtype: 4-bit
    weights may be packed into a float ``quant_storage``), else None."""
    bnb = sys.modules.get("bitsandbytes")  # a bitsandbytes layer exists only once bitsandbytes is imported
    if bnb is None:
        return None
    if isinstance(base, bnb.nn.Linear4bit) or isinstance(base.weight, bnb.nn.Params4bit):
        return "Linear4bit"
    if isinstance(base, bnb.nn.Linear8bitLt) or isinstance(base.weight, bnb.nn.Int8Params):
        return "Linear8bitLt"
    return None


def _factor_dtype(base: nn.Module) -> torch.dtype:
    """fp32 factors for half / quantized bases (stable training), the base dtype for fp32/fp64."""
    dtype = base.weight.dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


class AdapterLayer(nn.Module):
    """Common wrapper: ``y = base(x) + s · adapter(dropout(x))``; subclasses define the factors."""

    method = ""
    roles: dict[str, str] = {}  # factor attribute → role, in state-dict order
    zero_factor: dict[str, str] = {}  # AdapterConfig.init → the factor attribute it zeroes

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.d_out, self.d_in = base_layer_sizes(base_layer)
        self.rank = rank
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self._device = base_layer.weight.device
        self._dtype = _factor_dtype(base_layer)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight: model code reads ``layer.weight`` (T5 checks its dtype)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    def _new_factor(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(*shape, device=self._device, dtype=self._dtype))

    def factors(self) -> dict[str, nn.Parameter]:
        """Attribute name → factor, in a fixed order."""
        return {attr: getattr(self, attr) for attr in self.roles}

    def reset_factors(self, init: str = "b-zero", generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform (as LoRA) for every factor but the one ``init`` zeroes, so ΔW = 0."""
        zero = self.zero_factor[init]
        with torch.no_grad():
            for attr, param in self.factors().items():
                if param.is_meta:
                    continue
                if attr == zero:
                    param.zero_()
                    continue
                bound = 1.0 / math.sqrt(param.shape[1])  # kaiming_uniform_(a=sqrt(5)) bound
                values = torch.rand(param.shape, generator=generator, dtype=torch.float64) * 2 - 1
                param.copy_(values * bound)

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """Unscaled adapter term for x (..., d_in) → (..., d_out), never forming ΔW."""
        raise NotImplementedError

    def unscaled_delta(self) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """Dense ΔW in the (d_out, d_in) orientation (merging and tests only)."""
        return self.scaling * self.unscaled_delta()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        delta = self.adapter_output(self.dropout(x.to(self._dtype)))
        return result + (self.scaling * delta).to(result.dtype)

    def weight_for_merge(self) -> nn.Parameter:
        weight = self.base_layer.weight
        kind = quantized_kind(self.base_layer)
        if kind is not None:
            raise TypeError(
                f"cannot merge into a {kind} ({self.d_out}×{self.d_in}, quantized base with {weight.dtype} "
                f"{type(weight).__name__} weight): keep the adapter unmerged, or load the base unquantized "
                "(base_quant='none') to merge"
            )
        if not weight.dtype.is_floating_point:
            raise TypeError(
                f"cannot merge into a {type(self.base_layer).__name__} with {weight.dtype} / "
                f"{type(weight).__name__} weight (quantized base); keep the adapter unmerged"
            )
        return weight

    def _apply_delta(self, sign: float) -> None:
        weight = self.weight_for_merge()
        delta = self.delta_weight().to(weight.dtype)
        if isinstance(self.base_layer, Conv1D):
            delta = delta.T
        with torch.no_grad():
            weight.add_(sign * delta)

    def merge(self) -> None:
        if self.merged:
            raise RuntimeError(f"{type(self).__name__} ({self.d_out}×{self.d_in}) is already merged")
        self._apply_delta(1.0)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError(f"{type(self).__name__} ({self.d_out}×{self.d_in}) is not merged")
        self._apply_delta(-1.0)
        self.merged = False

    def extra_repr(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.factors().items())
        return f"method={self.method}, scaling={self.scaling:g}, {shapes}"


class KroneckerLayer(AdapterLayer):
    """ΔW = s · A ⊗ B: holds A and the shape; subclasses say what B is and how x meets it."""

    def __init__(self, base_layer, shape: KronShape, rank, alpha, dropout=0.0):
        super().__init__(base_layer, rank, alpha, dropout)
        if (shape.d_out, shape.d_in) != (self.d_out, self.d_in):
            raise ValueError(f"{shape} does not fit a {self.d_out}×{self.d_in} {type(base_layer).__name__}")
        self.shape = shape
        self.kron_A = self._new_factor(shape.a_out, shape.a_in)

    def b_matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """(..., a_in, b_in) → (..., a_out, b_out), i.e. A·X·Bᵀ per token."""
        raise NotImplementedError

    def adapter_output(self, x):
        lead = x.shape[:-1]
        return self.mix(x.reshape(*lead, self.shape.a_in, self.shape.b_in)).reshape(*lead, self.d_out)

    def unscaled_delta(self):
        return torch.kron(self.kron_A, self.b_matrix())


class KronLoRALayer(KroneckerLayer):
    """ΔW = s · A ⊗ (B1·B2) (Kron-LoRA)."""

    method = "kron-lora"
    FUSED_MAX_A_IN = 4  # above this the fused output GEMM (K = a_in·r) costs more than the A-mix
    roles = {"kron_A": "A", "kron_B1": "B1", "kron_B2": "B2"}
    zero_factor = {"b-zero": "kron_B1", "a-zero": "kron_A"}

    def __init__(self, base_layer, shape: KronShape, rank, alpha, dropout=0.0):
        super().__init__(base_layer, shape, rank, alpha, dropout)
        self.kron_B1 = self._new_factor(shape.b_out, rank)
        self.kron_B2 = self._new_factor(rank, shape.b_in)

    def mix(self, x):
        z = F.linear(x, self.kron_B2)  # (..., a_in, r)
        if self.shape.a_in <= self.FUSED_MAX_A_IN:  # one GEMM with the small (d_out × a_in·r) A⊗B1
            out = F.linear(z.flatten(-2), torch.kron(self.kron_A, self.kron_B1))
            return out.unflatten(-1, (self.shape.a_out, self.shape.b_out))
        return F.linear(torch.matmul(self.kron_A, z), self.kron_B1)  # A-mix in rank space

    def b_matrix(self):
        return self.kron_B1 @ self.kron_B2


class KronALayer(KroneckerLayer):
    """ΔW = s · A ⊗ B with B full (KronA)."""

    method = "krona"
    roles = {"kron_A": "A", "kron_B": "B"}
    zero_factor = {"b-zero": "kron_B", "a-zero": "kron_A"}

    def __init__(self, base_layer, shape: KronShape, rank, alpha, dropout=0.0):
        super().__init__(base_layer, shape, rank, alpha, dropout)
        self.kron_B = self._new_factor(shape.b_out, shape.b_in)

    def mix(self, x):
        s = self.shape
        if s.a_in * s.b_out * (s.b_in + s.a_out) <= s.a_out * s.b_in * (s.a_in + s.b_out):
            return torch.matmul(self.kron_A, F.linear(x, self.kron_B))  # B first: fewer flops here
        return F.linear(torch.matmul(self.kron_A, x), self.kron_B)

    def b_matrix(self):
        return self.kron_B


class LoRALayer(AdapterLayer):
    """ΔW = s · B·A, rank r (the baseline)."""

    method = "lora"
    roles = {"lora_A": "lora_A", "lora_B": "lora_B"}
    zero_factor = {"b-zero": "lora_B", "a-zero": "lora_A"}

    def __init__(self, base_layer, rank, alpha, dropout=0.0):
        super().__init__(base_layer, rank, alpha, dropout)
        self.lora_A = self._new_factor(rank, self.d_in)
        self.lora_B = self._new_factor(self.d_out, rank)

    def adapter_output(self, x):
        return F.linear(F.linear(x, self.lora_A), self.lora_B)

    def unscaled_delta(self):
        return self.lora_B @ self.lora_A
