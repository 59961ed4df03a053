"""Every check of a run config's values, one problem message each (the CLI prints them all at once).

Kept apart from :mod:`fedkron.config` because the checks read the task registry, the strategies'
own needs and the device mixes, which the config's field definitions must not import.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

from fedkron.compression.payload import BLOCK_SIZES
from fedkron.config import FILE_TASKS, RunConfig
from fedkron.strategies.registry import STRATEGIES


def _flag(name: str) -> str:
    return name.replace("_", "-")


def problems(cfg: RunConfig) -> list[str]:
    """Every problem of ``cfg`` (resolved: task and method defaults filled in)."""
    from fedkron.data import TASKS  # here: data pulls in `datasets`

    problems: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            problems.append(msg)

    for f in fields(cfg):
        value, choices = getattr(cfg, f.name), f.metadata.get("choices")
        if choices and value not in choices:
            need(False, f"{_flag(f.name)} {value!r} is not one of {', '.join(choices)}")
        if isinstance(value, float) and not math.isfinite(value):
            need(False, f"{_flag(f.name)} must be a finite number (got {value})")
    need(cfg.task in TASKS or cfg.task in FILE_TASKS,
         f"task {cfg.task!r} is not one of {', '.join(sorted(TASKS) + list(FILE_TASKS))}")
    need(cfg.task not in FILE_TASKS or bool(cfg.train_file), f"task {cfg.task!r} needs --train-file")
    need(cfg.rank >= 1, f"rank must be ≥ 1 (got {cfg.rank})")
    need(cfg.alpha > 0, f"alpha must be > 0 (got {cfg.alpha})")
    need(cfg.max_length >= 8, f"max-length must be ≥ 8 (got {cfg.max_length})")
    need(cfg.eval_samples >= 0, f"eval-samples must be ≥ 0 (0 = whole split; got {cfg.eval_samples})")
    for role, codec in (("quant", cfg.quant), ("downlink", cfg.downlink)):
        allowed = BLOCK_SIZES.get(codec)
        need(not (cfg.block_size and allowed and cfg.block_size not in allowed),
             f"block-size {cfg.block_size} does not suit the {role} codec {codec} (bitsandbytes takes "
             f"{', '.join(map(str, allowed or ()))})")
    need(cfg.clients >= 1, f"clients must be ≥ 1 (got {cfg.clients})")
    need(cfg.rounds >= 1, f"rounds must be ≥ 1 (got {cfg.rounds})")
    need(0.0 < cfg.fraction <= 1.0, f"fraction must be in (0, 1] (got {cfg.fraction})")
    need(0.0 <= cfg.fraction_evaluate <= 1.0, f"fraction-evaluate must be in [0, 1] (got {cfg.fraction_evaluate})")
    need(cfg.central_eval or cfg.fraction_evaluate > 0,
         "no evaluation at all: with --no-central-eval give --fraction-evaluate > 0")
    need(1 <= cfg.min_replies <= min(cfg.clients, cfg.sampled_per_round()),
         f"min-replies must be in [1, the {cfg.sampled_per_round()} clients sampled per round] "
         f"(got {cfg.min_replies})")
    need(cfg.dirichlet_alpha > 0, f"dirichlet-alpha must be > 0 (got {cfg.dirichlet_alpha})")
    need(cfg.server_lr > 0, f"server-lr must be > 0 (got {cfg.server_lr})")
    need(0 <= cfg.server_momentum < 1, f"server-momentum must be in [0, 1) (got {cfg.server_momentum})")
    need(cfg.proximal_mu >= 0, f"proximal-mu must be ≥ 0 (got {cfg.proximal_mu})")
    need(0 <= cfg.trim_fraction < 0.5, f"trim-fraction must be in [0, 0.5) (got {cfg.trim_fraction})")
    need(cfg.num_malicious >= 0, f"num-malicious must be ≥ 0 (got {cfg.num_malicious})")
    need(cfg.max_update_norm >= 0, f"max-update-norm must be ≥ 0 (got {cfg.max_update_norm})")
    need(cfg.norm_bound_factor == 0 or cfg.norm_bound_factor >= 1,
         f"norm-bound-factor must be 0 (off) or ≥ 1 (got {cfg.norm_bound_factor})")
    need(0 < cfg.max_weight_share <= 1, f"max-weight-share must be in (0, 1] (got {cfg.max_weight_share})")
    need(cfg.clip_norm >= 0, f"clip-norm must be ≥ 0 (got {cfg.clip_norm})")
    need(cfg.dp_noise >= 0, f"dp-noise must be ≥ 0 (got {cfg.dp_noise})")
    need(cfg.dp_noise == 0 or cfg.clip_norm > 0 or cfg.adaptive_clipping,
         "dp-noise needs a clipping norm: give --clip-norm or --adaptive-clipping")
    need(0 < cfg.dp_delta < 1, f"dp-delta must be in (0, 1) (got {cfg.dp_delta})")
    need(cfg.round_timeout >= 0, f"round-timeout must be ≥ 0 (got {cfg.round_timeout})")
    need(cfg.local_steps >= 1, f"local-steps must be ≥ 1 (got {cfg.local_steps})")
    need(cfg.batch_size >= 1, f"batch-size must be ≥ 1 (got {cfg.batch_size})")
    need(0 < cfg.lr < 1, f"lr must be in (0, 1) (got {cfg.lr})")
    need(0 <= cfg.lr_min <= cfg.lr, f"lr-min must be in [0, lr] (got {cfg.lr_min})")
    need(0 <= cfg.seed < 2**32, f"seed must be in [0, 2^32) (got {cfg.seed})")
    need(cfg.rank <= 4096, f"rank must be ≤ 4096 (got {cfg.rank})")
    if cfg.strategy in STRATEGIES:
        problems += STRATEGIES[cfg.strategy].problems(cfg)
    from fedkron.strategies.edge import edge_problems  # here: device mixes load files

    problems += edge_problems(cfg)
    if cfg.data_dir:
        need(Path(cfg.data_dir).is_dir(), f"data-dir {cfg.data_dir!r} is not a folder")
    if cfg.partition == "natural" and cfg.task in TASKS:
        need(TASKS[cfg.task].natural_id is not None,
             f"partition 'natural' needs a task with a natural split (task {cfg.task!r} has none)")
    return problems
