"""One typed run config that flows to every part of a run.

Built once from CLI flags, from Flower's run config (``[tool.flwr.app.config]``) or from the
ConfigRecord the server broadcasts, validated once, and shared by server, clients and tests so
nothing is configured two ways.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

METHODS = ("kron-lora", "krona", "lora")
CODECS = ("fp32", "fp16", "bf16", "int8", "nf4", "fp4")
PARTITIONS = ("iid", "dirichlet", "natural")
AGGREGATIONS = ("fedavg", "exact", "median", "trimmed-mean")
SERVER_OPTS = ("sgd", "avgm", "adam")
LOCAL_LOSSES = ("ce", "logit-adjusted")
LOCAL_OPTS = ("adamw", "sgd")
MC_HEADS = ("cross", "dual")

# Per-task defaults: what a user gets with ``--task X`` and no other flag. Calibrated on 2 cores
# so the default of each task finishes in minutes (see README, "Defaults").
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "boolq": {"max_length": 96, "clients": 4, "rounds": 3, "local_steps": 8, "eval_samples": 256},
    "sst2": {"max_length": 64, "clients": 4, "rounds": 3, "local_steps": 25, "eval_samples": 384},
}
_PAIR = {"max_length": 128, "clients": 4, "rounds": 3, "local_steps": 20, "eval_samples": 256}
_CHOICE = {"max_length": 64, "clients": 4, "rounds": 3, "local_steps": 20, "eval_samples": 256}
TASK_DEFAULTS.update({"rte": _PAIR, "mrpc": _PAIR, "sentiment": {**_PAIR, "clients": 5},
                      **{t: _CHOICE for t in ("piqa", "winogrande", "arc-easy", "arc-challenge", "hellaswag")}})


class ConfigError(ValueError):
    """A run-config value is invalid; the message lists every problem found."""


def bits_to_codec(bits: int, quant: str | None = None) -> str:
    """Map ``--bits`` (+ optional ``--quant``) to a codec name: 4 → nf4 unless quant=fp4."""
    table = {32: "fp32", 16: "fp16", 8: "int8", 4: quant or "nf4"}
    if bits not in table:
        raise ConfigError(f"--bits must be one of 4, 8, 16, 32 (got {bits})")
    codec = table[bits]
    if bits == 4 and codec not in ("nf4", "fp4"):
        raise ConfigError(f"--bits 4 takes --quant nf4 or fp4 (got {codec!r})")
    if bits == 16 and quant in ("bf16", "fp16"):
        codec = quant
    return codec


def codec_bits(codec: str) -> int:
    return {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "nf4": 4, "fp4": 4}[codec]


@dataclass
class RunConfig:
    """Every knob of a run. Field names are the Flower run-config keys with ``-`` → ``_``."""

    # Model and task
    model: str = "minilm-l6"
    task: str = "boolq"
    data_dir: str = ""
    max_length: int = 0  # 0 → task default
    mc_head: str = "cross"  # multiple choice: "cross" (context+choice pairs) or "dual" (embedding similarity)
    eval_samples: int = -1  # -1 → task default; 0 → the whole held-out split
    # Adapter
    method: str = "kron-lora"
    rank: int = 8
    alpha: float = 16.0
    shape_policy: str = "paper"
    # Communication
    quant: str = "nf4"  # uplink codec
    downlink: str = "fp32"
    block_size: int = 0  # 0 → codec default
    error_feedback: bool = True
    # Federation
    clients: int = 0  # 0 → task default
    rounds: int = 0  # 0 → task default
    fraction: float = 1.0
    min_replies: int = 1
    partition: str = "iid"
    dirichlet_alpha: float = 0.5
    aggregation: str = "fedavg"
    server_opt: str = "sgd"
    server_lr: float = 1.0
    clip_norm: float = 0.0  # clip each client update to this L2 norm before averaging (0 = off)
    trim_fraction: float = 0.2  # share cut at each end by trimmed-mean
    max_update_norm: float = 0.0  # reject replies whose update norm exceeds this (0 = no bound)
    round_timeout: float = 0.0  # seconds to wait for replies per round (0 = 3600)
    seed: int = 0
    # Local training
    local_steps: int = 0  # 0 → task default
    batch_size: int = 16
    lr: float = 2e-3
    local_loss: str = "ce"  # or "logit-adjusted": each client fits the class-balanced classifier
    local_opt: str = "adamw"  # or "sgd" (momentum 0.9): step size follows the gradient, not normalised
    # Output
    out: str = "results/run"
    resume: bool = False  # continue from the newest checkpoint in `out`
    client_state_dir: str = ""  # where clients keep error-feedback residuals per round ('' = in memory)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "RunConfig":
        """Build from hyphen- or underscore-keyed values (Flower run config, ConfigRecord)."""
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        unknown = []
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                unknown.append(key)
                continue
            kwargs[name] = _coerce(known[name], value)
        if unknown:
            raise ConfigError(f"unknown run-config keys: {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    def to_record(self) -> dict[str, Any]:
        """Hyphen-keyed scalars, fit for a Flower ConfigRecord or ``--run-config``."""
        return {
            f.name.replace("_", "-"): getattr(self, f.name)
            for f in fields(self)
            if f.name != "extra"
        }

    def resolved(self) -> "RunConfig":
        """Fill task defaults for fields left at 0 and validate; returns a new config."""
        cfg = dataclasses.replace(self)
        defaults = TASK_DEFAULTS.get(cfg.task, TASK_DEFAULTS["sst2"])
        for name in ("max_length", "clients", "rounds", "local_steps"):
            if getattr(cfg, name) == 0:
                setattr(cfg, name, defaults[name])
        if cfg.eval_samples == -1:
            cfg.eval_samples = defaults["eval_samples"]
        cfg.validate()
        return cfg

    # --- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every value; raise one ConfigError listing all problems."""
        problems: list[str] = []

        def need(cond: bool, msg: str) -> None:
            if not cond:
                problems.append(msg)

        from fedkron.data import TASKS  # local import: data pulls in `datasets`

        need(self.task in TASKS, f"task {self.task!r} is not one of {sorted(TASKS)}")
        need(self.method in METHODS, f"method {self.method!r} is not one of {METHODS}")
        need(self.quant in CODECS, f"quant (uplink codec) {self.quant!r} is not one of {CODECS}")
        need(self.downlink in CODECS, f"downlink codec {self.downlink!r} is not one of {CODECS}")
        need(self.partition in PARTITIONS, f"partition {self.partition!r} is not one of {PARTITIONS}")
        need(self.aggregation in AGGREGATIONS,
             f"aggregation {self.aggregation!r} is not one of {AGGREGATIONS}")
        need(self.server_opt in SERVER_OPTS, f"server-opt {self.server_opt!r} is not one of {SERVER_OPTS}")
        need(self.rank >= 1, f"rank must be ≥ 1 (got {self.rank})")
        need(self.alpha > 0, f"alpha must be > 0 (got {self.alpha})")
        need(self.max_length >= 8, f"max-length must be ≥ 8 (got {self.max_length})")
        need(self.eval_samples >= 0, f"eval-samples must be ≥ 0 (0 = whole split; got {self.eval_samples})")
        need(self.block_size == 0 or (self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0),
             f"block-size must be 0 (codec default) or a power of two ≥ 16 (got {self.block_size})")
        need(self.clients >= 1, f"clients must be ≥ 1 (got {self.clients})")
        need(self.rounds >= 1, f"rounds must be ≥ 1 (got {self.rounds})")
        need(0.0 < self.fraction <= 1.0, f"fraction must be in (0, 1] (got {self.fraction})")
        need(1 <= self.min_replies <= self.clients,
             f"min-replies must be in [1, clients={self.clients}] (got {self.min_replies})")
        need(self.dirichlet_alpha > 0, f"dirichlet-alpha must be > 0 (got {self.dirichlet_alpha})")
        need(self.server_lr > 0, f"server-lr must be > 0 (got {self.server_lr})")
        need(self.clip_norm >= 0, f"clip-norm must be ≥ 0 (got {self.clip_norm})")
        need(0 <= self.trim_fraction < 0.5, f"trim-fraction must be in [0, 0.5) (got {self.trim_fraction})")
        need(self.max_update_norm >= 0, f"max-update-norm must be ≥ 0 (got {self.max_update_norm})")
        need(self.round_timeout >= 0, f"round-timeout must be ≥ 0 (got {self.round_timeout})")
        need(self.local_steps >= 1, f"local-steps must be ≥ 1 (got {self.local_steps})")
        need(self.batch_size >= 1, f"batch-size must be ≥ 1 (got {self.batch_size})")
        need(0 < self.lr < 1, f"lr must be in (0, 1) (got {self.lr})")
        need(self.local_loss in LOCAL_LOSSES, f"local-loss {self.local_loss!r} is not one of {LOCAL_LOSSES}")
        need(self.local_opt in LOCAL_OPTS, f"local-opt {self.local_opt!r} is not one of {LOCAL_OPTS}")
        need(self.mc_head in MC_HEADS, f"mc-head {self.mc_head!r} is not one of {MC_HEADS}")
        need(self.seed >= 0, f"seed must be ≥ 0 (got {self.seed})")
        if self.data_dir:
            need(Path(self.data_dir).is_dir(), f"data-dir {self.data_dir!r} is not a folder")
        if self.aggregation == "exact":
            need(self.method == "kron-lora",
                 "aggregation 'exact' needs method kron-lora (it averages B1 with A and B2 frozen)")
        if self.partition == "natural" and self.task in TASKS:
            need(TASKS[self.task].natural_id is not None,
                 f"partition 'natural' needs a task with a natural split (task {self.task!r} has none)")
        if problems:
            raise ConfigError("invalid run config:\n  - " + "\n  - ".join(problems))

    def codec_options(self) -> dict[str, Any]:
        """Options for ``fedkron.compression.get_codec`` (block size, when not the codec's default)."""
        return {"block_size": self.block_size} if self.block_size else {}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Coerce Flower/CLI values (ints for floats, 'true' strings) to the field's type."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"run-config key {f.name.replace('_', '-')!r}: cannot read {value!r} as {kind}") from None
    return value


def default_data_dir() -> str:
    """``$FEDKRON_DATA_DIR``, else ``../shared/data`` beside the repo when it exists, else ''."""
    env = os.environ.get("FEDKRON_DATA_DIR")
    if env:
        return env
    guess = Path(__file__).resolve().parents[2] / "shared" / "data"
    return str(guess) if guess.is_dir() else ""
