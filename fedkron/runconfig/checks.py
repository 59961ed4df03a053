"""Every check of a run config's values, one problem message each (the CLI prints them all at once).

Kept apart from :mod:`fedkron.runconfig.fields` so the field definitions stay a plain table; the
checks read the task registry, the strategies' own needs and the device mixes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from fedkron.compression.payload import BLOCK_SIZES
from fedkron.data import TASKS
from fedkron.runconfig.choices import FILE_TASKS, ConfigError, flag
from fedkron.strategies.edge import edge_problems
from fedkron.strategies.registry import STRATEGIES, STRATEGY_FIELDS, strategies_reading

if TYPE_CHECKING:
    from fedkron.runconfig.fields import RunConfig


def validate(cfg: RunConfig) -> None:
    """Check every value; raise one ConfigError listing all problems."""
    found = problems(cfg)
    if found:
        raise ConfigError("invalid run config:\n  - " + "\n  - ".join(found))


def problems(cfg: RunConfig) -> list[str]:
    """Every problem of ``cfg`` (resolved: task and method defaults filled in)."""
    found = _value_problems(cfg) + _model_problems(cfg) + _federation_problems(cfg) + _training_problems(cfg)
    found += _scope_problems(cfg) + _alternating_problems(cfg)
    if cfg.strategy in STRATEGIES:
        found += STRATEGIES[cfg.strategy].problems(cfg)
    return found + edge_problems(cfg)


def _failed(checks: list[tuple[bool, str]]) -> list[str]:
    return [message for ok, message in checks if not ok]


def _value_problems(cfg: RunConfig) -> list[str]:
    """Choices and finiteness, field by field."""
    found = []
    for f in fields(cfg):
        value, choices = getattr(cfg, f.name), f.metadata.get("choices")
        if choices and value not in choices:
            found.append(f"{flag(f.name)} {value!r} is not one of {', '.join(choices)}")
        if isinstance(value, float) and not math.isfinite(value):
            found.append(f"{flag(f.name)} must be a finite number (got {value})")
    return found


def _model_problems(cfg: RunConfig) -> list[str]:
    """Task, data, adapter and codec settings."""
    from fedkron.data import TASKS  # here, not at the top: fedkron.data imports `datasets` (seconds)

    checks = [
        (
            cfg.task in TASKS or cfg.task in FILE_TASKS,
            f"task {cfg.task!r} is not one of {', '.join(sorted(TASKS) + list(FILE_TASKS))}",
        ),
        (cfg.task not in FILE_TASKS or bool(cfg.train_file), f"task {cfg.task!r} needs --train-file"),
        (cfg.rank >= 1, f"rank must be ≥ 1 (got {cfg.rank})"),
        (cfg.rank <= 4096, f"rank must be ≤ 4096 (got {cfg.rank})"),
        (cfg.alpha > 0, f"alpha must be > 0 (got {cfg.alpha})"),
        (cfg.max_length >= 8, f"max-length must be ≥ 8 (got {cfg.max_length})"),
        (cfg.eval_samples >= 0, f"eval-samples must be ≥ 0 (0 = whole split; got {cfg.eval_samples})"),
        (not cfg.data_dir or Path(cfg.data_dir).is_dir(), f"data-dir {cfg.data_dir!r} is not a folder"),
        (
            cfg.partition != "natural" or cfg.task not in TASKS or TASKS[cfg.task].natural_id is not None,
            f"partition 'natural' needs a task with a natural split (task {cfg.task!r} has none)",
        ),
    ]
    for role, codec in (("uplink", cfg.uplink), ("downlink", cfg.downlink)):
        allowed = BLOCK_SIZES.get(codec)
        checks.append(
            (
                not (cfg.block_size and allowed and cfg.block_size not in allowed),
                f"block-size {cfg.block_size} does not suit the {role} codec {codec} (bitsandbytes takes "
                f"{', '.join(map(str, allowed or ()))})",
            )
        )
    return _failed(checks)


def _federation_problems(cfg: RunConfig) -> list[str]:
    """Clients, rounds, sampling, robustness and privacy settings."""
    sampled = cfg.sampled_per_round() if math.isfinite(cfg.fraction) else 0
    return _failed(
        [
            (cfg.clients >= 1, f"clients must be ≥ 1 (got {cfg.clients})"),
            (cfg.rounds >= 1, f"rounds must be ≥ 1 (got {cfg.rounds})"),
            (0.0 < cfg.fraction <= 1.0, f"fraction must be in (0, 1] (got {cfg.fraction})"),
            (0.0 <= cfg.fraction_evaluate <= 1.0, f"fraction-evaluate must be in [0, 1] (got {cfg.fraction_evaluate})"),
            (
                cfg.central_eval or cfg.fraction_evaluate > 0,
                "no evaluation at all: with --no-central-eval give --fraction-evaluate > 0",
            ),
            (
                1 <= cfg.min_replies <= min(cfg.clients, max(sampled, 1)),
                f"min-replies must be in [1, the {sampled} clients sampled per round] (got {cfg.min_replies})",
            ),
            (cfg.dirichlet_alpha > 0, f"dirichlet-alpha must be > 0 (got {cfg.dirichlet_alpha})"),
            (cfg.round_timeout >= 0, f"round-timeout must be ≥ 0 (got {cfg.round_timeout})"),
            (cfg.save_every >= 0, f"save-every must be ≥ 0 (0 = off; got {cfg.save_every})"),
            (0 <= cfg.seed < 2**32, f"seed must be in [0, 2^32) (got {cfg.seed})"),
            (cfg.server_lr > 0, f"server-lr must be > 0 (got {cfg.server_lr})"),
            (0 <= cfg.server_momentum < 1, f"server-momentum must be in [0, 1) (got {cfg.server_momentum})"),
            (cfg.proximal_mu >= 0, f"proximal-mu must be ≥ 0 (got {cfg.proximal_mu})"),
            (0 <= cfg.trim_fraction < 0.5, f"trim-fraction must be in [0, 0.5) (got {cfg.trim_fraction})"),
            (cfg.num_malicious >= 0, f"num-malicious must be ≥ 0 (got {cfg.num_malicious})"),
            (cfg.max_update_norm >= 0, f"max-update-norm must be ≥ 0 (got {cfg.max_update_norm})"),
            (
                cfg.norm_bound_factor == 0 or cfg.norm_bound_factor >= 1,
                f"norm-bound-factor must be 0 (off) or ≥ 1 (got {cfg.norm_bound_factor})",
            ),
            (0 < cfg.max_weight_share <= 1, f"max-weight-share must be in (0, 1] (got {cfg.max_weight_share})"),
            (cfg.clip_norm >= 0, f"clip-norm must be ≥ 0 (got {cfg.clip_norm})"),
            (cfg.dp_noise >= 0, f"dp-noise must be ≥ 0 (got {cfg.dp_noise})"),
            (
                cfg.dp_noise == 0 or cfg.clip_norm > 0 or cfg.adaptive_clipping,
                "dp-noise needs a clipping norm: give --clip-norm or --adaptive-clipping",
            ),
            (0 < cfg.dp_delta < 1, f"dp-delta must be in (0, 1) (got {cfg.dp_delta})"),
        ]
    )


# Settings that only some runs read: (field, does this run read it?, the flag value it needs). A value
# changed from its default in a run that never reads it would be dropped without a word; refused
# instead. (A language model's own limits are preflight's lm_problems: they need the model's config.)
def _strategy_scope(field: str) -> tuple[str, Callable[[RunConfig], bool], str]:
    """A strategy setting's scope, from the registry's record of which strategies read it."""
    names = strategies_reading(field)
    return field, lambda c: c.strategy in names, f"--strategy {(' or ' if len(names) == 2 else ', ').join(names)}"


SCOPED: tuple[tuple[str, Callable[[RunConfig], bool], str], ...] = (
    ("data_dir", lambda c: c.task not in FILE_TASKS, "a named task (custom and instruct read --train-file)"),
    ("train_file", lambda c: c.task in FILE_TASKS, "--task custom or instruct"),
    ("eval_file", lambda c: c.task in FILE_TASKS, "--task custom or instruct"),
    ("text_column", lambda c: c.task == "custom", "--task custom"),
    ("text_pair_column", lambda c: c.task == "custom", "--task custom"),
    ("label_column", lambda c: c.task == "custom", "--task custom"),
    ("mc_head", lambda c: _multiple_choice(c.task), "a multiple-choice task (piqa, arc-easy, ...)"),
    ("dirichlet_alpha", lambda c: c.partition == "dirichlet", "--partition dirichlet"),
    *(_strategy_scope(name) for name in STRATEGY_FIELDS),
    ("dp_delta", lambda c: _accounted(c), "--dp-noise > 0 and --clip-norm on plain fedavg (where ε is accounted)"),
    ("max_weight_share", lambda c: c.dp_noise == 0, "no --dp-noise (central DP weighs every client equally)"),
    ("lr_min", lambda c: c.lr_schedule == "cosine", "--lr-schedule cosine"),
)


def _accounted(cfg: RunConfig) -> bool:
    """Flower's RDP accountant (the ε reported at --dp-delta) runs for fixed clipping on plain FedAvg."""
    plain = cfg.strategy == "fedavg" and cfg.server_lr == 1.0
    return cfg.dp_noise > 0 and cfg.clip_norm > 0 and not cfg.adaptive_clipping and plain


def _multiple_choice(task: str) -> bool:

    return task in TASKS and TASKS[task].is_multiple_choice


def _scope_problems(cfg: RunConfig) -> list[str]:
    """Settings changed from their default in a run that would never read them."""
    defaults = {f.name: f.default for f in fields(cfg)}
    found = [
        f"{flag(name)} {getattr(cfg, name)!r} has no effect here: it applies only with {needs}"
        for name, reads, needs in SCOPED
        if getattr(cfg, name) != defaults[name] and not reads(cfg)
    ]
    if cfg.task == "instruct" and cfg.partition != "iid":
        found.append(f"partition {cfg.partition!r} needs labels; --task instruct splits its rows iid")
    return found


def _alternating_problems(cfg: RunConfig) -> list[str]:
    """Alternating aggregation sends another factor each round: a server optimiser whose state is
    kept per array (FedAvgM's momentum and its current arrays, FedAdam/Yogi/Adagrad's moments) pairs
    one round's arrays with another's by position or key, so it cannot run."""
    if cfg.aggregation != "alternating" or cfg.strategy not in STRATEGIES:
        return []
    if STRATEGIES[cfg.strategy].array_state or (cfg.strategy == "fedavg" and cfg.server_lr != 1.0):
        how = f"--strategy {cfg.strategy}" if cfg.strategy != "fedavg" else "--server-lr ≠ 1 (FedAvgM)"
        stateless = ", ".join(n for n, spec in STRATEGIES.items() if not spec.array_state)
        return [
            f"aggregation 'alternating' cannot run with {how}: its server state is kept per array across "
            f"rounds, and alternating sends another factor each round (use one of {stateless}, with --server-lr 1)"
        ]
    return []


def _training_problems(cfg: RunConfig) -> list[str]:
    """Local training settings."""
    return _failed(
        [
            (cfg.local_steps >= 1, f"local-steps must be ≥ 1 (got {cfg.local_steps})"),
            (cfg.batch_size >= 1, f"batch-size must be ≥ 1 (got {cfg.batch_size})"),
            (0 < cfg.lr < 1, f"lr must be in (0, 1) (got {cfg.lr})"),
            (0 <= cfg.lr_min <= cfg.lr, f"lr-min must be in [0, lr] (got {cfg.lr_min})"),
        ]
    )
