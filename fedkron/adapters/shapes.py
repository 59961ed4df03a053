"""Factor-shape policies: how a layer's d_out × d_in splits into A (a_out × a_in) ⊗ B (b_out × b_in)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import AdapterConfig, AdapterConfigError
from .targets import matches_suffix


class FactorShapeError(AdapterConfigError):
    """A layer's sizes do not factor under the chosen policy."""


@dataclass(frozen=True)
class KronShape:
    a_out: int
    a_in: int
    b_out: int
    b_in: int

    @property
    def d_out(self) -> int:
        return self.a_out * self.b_out

    @property
    def d_in(self) -> int:
        return self.a_in * self.b_in


def _largest_divisor_at_most(n: int, cap: int) -> int:
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def paper_shape(name: str, d_out: int, d_in: int, a_in: int, b_out: int) -> KronShape:
    """a_in fixed (2), B about b_out (256) rows: reproduces the Kron-LoRA paper's parameter counts."""
    if d_in % a_in:
        raise FactorShapeError(
            f"layer {name!r} (d_out={d_out}, d_in={d_in}): paper_a_in={a_in} does not divide d_in; "
            f"set AdapterConfig.paper_a_in or factor_shapes[{name!r}] = (a_out, a_in)"
        )
    rows = _largest_divisor_at_most(d_out, b_out)
    if rows == 1 and d_out > 1:
        raise FactorShapeError(
            f"layer {name!r} (d_out={d_out}, d_in={d_in}): d_out has no divisor in [2, {b_out}], "
            f"so B would have one row; set factor_shapes[{name!r}] = (a_out, a_in)"
        )
    return KronShape(d_out // rows, a_in, rows, d_in // a_in)


def peft_shape(d_out: int, d_in: int, decompose_factor: int) -> KronShape:
    """PEFT LoKr's own rule (its ``factorization`` on each side), so exports map one to one."""
    from peft.tuners.lokr.layer import factorization  # here: peft imports transformers (seconds)

    out_l, out_k = factorization(d_out, decompose_factor)
    in_m, in_n = factorization(d_in, decompose_factor)
    return KronShape(out_l, in_m, out_k, in_n)


def explicit_shape(name: str, d_out: int, d_in: int, a_out: int, a_in: int) -> KronShape:
    if d_out % a_out or d_in % a_in:
        raise FactorShapeError(
            f"layer {name!r} (d_out={d_out}, d_in={d_in}): factor_shapes gives A = {a_out}×{a_in}, "
            f"which does not divide the layer's sizes"
        )
    return KronShape(a_out, a_in, d_out // a_out, d_in // a_in)


def kron_shape(name: str, d_out: int, d_in: int, config: AdapterConfig) -> KronShape:
    """The factor shapes of layer ``name`` under ``config`` (override, then policy)."""
    for key, (a_out, a_in) in config.factor_shapes.items():
        if matches_suffix(name, key):
            return explicit_shape(name, d_out, d_in, a_out, a_in)
    if config.shape_policy == "peft":
        return peft_shape(d_out, d_in, config.decompose_factor)
    return paper_shape(name, d_out, d_in, config.paper_a_in, config.paper_b_out)
