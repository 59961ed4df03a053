"""The allowed values and per-task / per-method defaults of the run config, and its error type:
the facts both the field definitions (:mod:`.fields`) and their checks (:mod:`.checks`) read."""

from __future__ import annotations

from typing import Any

AGGREGATIONS = ("per-factor", "exact", "alternating")
LOCAL_LOSSES = ("ce", "logit-adjusted")
LOCAL_OPTS = ("adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
MC_HEADS = ("cross", "dual")
BASE_QUANTS = ("none", "nf4", "int8")
DEVICES = ("auto", "cpu", "cuda")
FILE_TASKS = ("custom", "instruct")  # tasks made from --train-file
DEFAULT_ROUND_TIMEOUT = 3600.0

# Per-task defaults: what a user gets with ``--task X`` and no other flag. Calibrated on 2 cores
# so the default of each task finishes in minutes (see README, "Task defaults").
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "boolq": {"max_length": 96, "clients": 4, "rounds": 3, "local_steps": 8, "eval_samples": 256},
    "sst2": {"max_length": 64, "clients": 4, "rounds": 3, "local_steps": 25, "eval_samples": 384},
}
_PAIR = {"max_length": 128, "clients": 4, "rounds": 3, "local_steps": 20, "eval_samples": 256}
_CHOICE = {"max_length": 64, "clients": 4, "rounds": 3, "local_steps": 20, "eval_samples": 256}
TASK_DEFAULTS.update(
    {
        "rte": _PAIR,
        "mrpc": _PAIR,
        "sentiment": {**_PAIR, "clients": 5},
        "instruct": {"max_length": 256, "clients": 4, "rounds": 3, "local_steps": 10, "eval_samples": 64},
        **{t: _CHOICE for t in ("piqa", "winogrande", "arc-easy", "arc-challenge", "hellaswag", "openbookqa")},
    }
)
TASK_DEFAULTED = ("max_length", "clients", "rounds", "local_steps")  # 0 → the task's default


# Per-method defaults (rank, what is averaged, local learning rate by aggregation), chosen from the
# SST-2 evidence in the README ("Savings against the baselines"): each method at its best rate.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # kron-lora, alternating: 8e-3 the best of 4e-3 / 8e-3 / 1.6e-2 (77.1 / 79.2 / 77.3 %, SST-2 compare
    # settings, nf4 both ways, seed 1)
    "kron-lora": {
        "rank": 4,
        "aggregation": "per-factor",
        "lr": {"exact": 8e-3, "per-factor": 4e-3, "alternating": 8e-3},
    },
    # krona, alternating: not tuned (per-factor's rate)
    "krona": {"rank": 8, "aggregation": "per-factor", "lr": {"exact": 2e-3, "per-factor": 2e-3, "alternating": 2e-3}},
    # lora, alternating: not tuned (per-factor's × 2)
    "lora": {"rank": 8, "aggregation": "per-factor", "lr": {"exact": 2e-3, "per-factor": 1e-3, "alternating": 2e-3}},
}


class ConfigError(ValueError):
    """A run-config value is invalid; the message lists every problem found."""


# The fields whose field default means "the task's default" (eval-samples: -1) and "the method's".
PER_TASK_FIELDS = (*TASK_DEFAULTED, "eval_samples")
PER_METHOD_FIELDS = tuple(METHOD_DEFAULTS["kron-lora"])  # rank, aggregation, lr


def flag(name: str) -> str:
    """A field's name as its CLI flag / Flower run-config key."""
    return name.replace("_", "-")
