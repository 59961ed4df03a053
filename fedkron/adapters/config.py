"""One typed, validated description of an adapter: what is trained, in which shapes, from which start."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

METHODS = ("kron-lora", "krona", "lora")
SHAPE_POLICIES = ("paper", "peft")
INITS = ("b-zero", "a-zero")


class AdapterConfigError(ValueError):
    """An AdapterConfig field holds a value the adapters cannot work with."""


@dataclass
class AdapterConfig:
    """How to adapt a model.

    method: ``"kron-lora"`` (ΔW = s·A⊗(B1·B2)), ``"krona"`` (ΔW = s·A⊗B, B full) or ``"lora"``
        (ΔW = s·B·A). The scaling is ``s = alpha / rank`` for all three (KronA uses ``rank`` only here).
    target_modules: ``"all-linear"`` = every ``nn.Linear`` / transformers ``Conv1D`` inside the
        model's repeated blocks (any ``nn.ModuleList``), never the task head or output embeddings; a
        list of module-name suffixes (``"q_lin"``, ``"attention.q_lin"``, or a full name); or a
        single other string, used as a regular expression that must match the full module name.
    modules_to_save: modules trained in full (the task head). ``"auto"`` picks modules named
        ``classifier``, ``pre_classifier``, ``score`` or ``qa_outputs`` when present; a list of
        suffixes as for ``target_modules`` (each must match); ``None``/``[]`` for none.
    shape_policy: how ``d_out × d_in`` splits into ``A (a_out × a_in)`` and ``B (b_out × b_in)``.
        ``"paper"`` (default, reproduces the Kron-LoRA paper's parameter counts): ``a_in = paper_a_in``
        (2) and ``b_out = paper_b_out`` (256). Documented fallback: when ``paper_b_out`` does not
        divide ``d_out``, ``b_out`` is the largest divisor of ``d_out`` not above it (so
        ``d_out ≤ 256`` gives ``a_out = 1``). A layer still raises ``FactorShapeError`` (naming it
        and its sizes) when ``paper_a_in`` does not divide ``d_in`` or ``d_out`` is a prime above
        ``paper_b_out``. ``"peft"``: PEFT LoKr's ``factorization(dim, decompose_factor)`` on each
        side, so the adapter exports to PEFT LoKr as is.
    factor_shapes: explicit override ``{module suffix: (a_out, a_in)}`` that wins over the policy.
    init: which factor starts at zero so that ΔW = 0 at step 0. ``"b-zero"`` (default) zeroes the
        output-side factor — B1 for Kron-LoRA, B for KronA and LoRA — leaving A (and B2) random, so
        ΔW is linear in that factor while the others stay frozen (exact federated averaging).
        ``"a-zero"`` zeroes A instead (PEFT LoKr's choice).
    init_seed: seed for the random factors (same start on every client), or ``None`` for the
        global torch RNG.
    """

    method: str = "kron-lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    modules_to_save: str | list[str] | None = "auto"
    shape_policy: str = "paper"
    paper_a_in: int = 2
    paper_b_out: int = 256
    decompose_factor: int = -1
    factor_shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    init: str = "b-zero"
    init_seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise AdapterConfigError(f"unknown adapter method {self.method!r}; expected one of {METHODS}")
        if not _is_int(self.rank) or self.rank <= 0:
            raise AdapterConfigError(f"rank must be a positive int, got {self.rank!r}")
        if not _is_real(self.alpha) or not math.isfinite(self.alpha):
            raise AdapterConfigError(f"alpha must be a finite number, got {self.alpha!r}")
        if not _is_real(self.dropout) or not 0.0 <= float(self.dropout) < 1.0:
            raise AdapterConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not isinstance(self.shape_policy, str) or self.shape_policy not in SHAPE_POLICIES:
            raise AdapterConfigError(f"unknown shape_policy {self.shape_policy!r}; expected one of {SHAPE_POLICIES}")
        if not isinstance(self.init, str) or self.init not in INITS:
            raise AdapterConfigError(f"unknown init {self.init!r}; expected one of {INITS}")
        if (
            not (_is_int(self.paper_a_in) and _is_int(self.paper_b_out))
            or self.paper_a_in <= 0
            or self.paper_b_out <= 0
        ):
            raise AdapterConfigError(
                f"paper_a_in and paper_b_out must be positive ints, got {self.paper_a_in!r}, {self.paper_b_out!r}"
            )
        if not _is_int(self.decompose_factor) or self.decompose_factor == 0 or self.decompose_factor < -1:
            raise AdapterConfigError(f"decompose_factor must be -1 or a positive int, got {self.decompose_factor!r}")
        if self.init_seed is not None and not _is_int(self.init_seed):
            raise AdapterConfigError(f"init_seed must be an int or None, got {self.init_seed!r}")
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if not _names_or_str(self.target_modules) or not self.target_modules:
            raise AdapterConfigError(
                f"target_modules must be a non-empty str or list of str, got {self.target_modules!r}"
            )
        if isinstance(self.modules_to_save, tuple):
            self.modules_to_save = list(self.modules_to_save)
        if self.modules_to_save is not None and not _names_or_str(self.modules_to_save):
            raise AdapterConfigError(
                f"modules_to_save must be None, a str or a list of str, got {self.modules_to_save!r}"
            )
        if not isinstance(self.factor_shapes, dict):
            raise AdapterConfigError(
                f"factor_shapes must map module suffix -> (a_out, a_in), got {self.factor_shapes!r}"
            )
        shapes = {}
        for key, value in self.factor_shapes.items():
            pair = tuple(value) if isinstance(value, (list, tuple)) else ()
            if not isinstance(key, str) or len(pair) != 2 or not all(_is_int(v) and v > 0 for v in pair):
                raise AdapterConfigError(f"factor_shapes[{key!r}] must be positive (a_out, a_in), got {value!r}")
            shapes[key] = (int(pair[0]), int(pair[1]))
        self.factor_shapes = shapes
        self.alpha = float(self.alpha)
        self.dropout = float(self.dropout)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); ``from_dict`` inverts it."""
        data = dataclasses.asdict(self)
        data["factor_shapes"] = {k: list(v) for k, v in self.factor_shapes.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        if not isinstance(data, dict):
            raise AdapterConfigError(f"an AdapterConfig must be a JSON object / dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterConfigError(f"unknown AdapterConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _names_or_str(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) and v for v in value))
