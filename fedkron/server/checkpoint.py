"""Checkpoints after every completed round, so a killed run resumes where it stood.

A checkpoint is a folder ``checkpoint/round-K`` holding the global factors, the Flower strategy's
own state (its server optimiser, clipping norm, privacy accountant: :mod:`fedkron.strategies.state`)
and torch's RNG state (safetensors + JSON), the ledger so far (CSV) and the metrics rows so far
(JSON). Client sampling and batches are seeded per round, so they need no state.
``checkpoint/latest.json`` names the newest complete checkpoint and is replaced atomically last,
so a crash while writing leaves the previous checkpoint in force.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedkron.runconfig.fields import ConfigError
from fedkron.server.ledger import Ledger


@dataclass
class Checkpoint:
    round: int
    global_state: dict[str, torch.Tensor]
    strategy_tensors: dict[str, torch.Tensor]
    strategy_values: dict
    ledger: Ledger
    metrics: list[dict]


# Settings that may change between a checkpoint and its resume (where the run lives, how far it goes).
PER_FOLDER = (
    "out",
    "resume",
    "client-state-dir",
    "rounds",
    "overwrite",
    "client-cpus",
    "client-gpus",
    "max-actors",
    "ray-address",
)


def save_checkpoint(
    out: Path,
    rnd: int,
    global_state,
    strategy_state: tuple[dict, dict],
    ledger: Ledger,
    metrics: list[dict],
    config: dict,
) -> Path:
    """Write round ``rnd``'s checkpoint; ``config`` (the run config record) is kept with it, so a
    resume with other settings is refused instead of mixing two runs."""
    root = Path(out) / "checkpoint"
    folder = root / f"round-{rnd}"
    tmp = root / f".round-{rnd}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in global_state.items()}, str(tmp / "global.safetensors"))
    tensors, values = strategy_state
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "strategy.safetensors"))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    ledger.write_csv(tmp / "ledger.csv")
    (tmp / "state.json").write_text(
        json.dumps({"round": rnd, "metrics": metrics, "strategy": values, "config": config})
    )
    _fsync_dir(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    pointer = root / "latest.json.tmp"
    pointer.write_text(json.dumps({"round": rnd, "folder": folder.name}))
    os.replace(pointer, root / "latest.json")
    for old in root.glob("round-*"):  # keep only the newest complete checkpoint
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _latest(out: Path) -> dict | None:
    pointer = Path(out) / "checkpoint" / "latest.json"
    return json.loads(pointer.read_text()) if pointer.is_file() else None


def latest_round(out: Path) -> int:
    """The round of the newest complete checkpoint under ``out`` (0 when there is none)."""
    latest = _latest(out)
    return int(latest["round"]) if latest else 0


def require_rounds_left(out: Path, done: int, rounds: int) -> None:
    """A resumed run must have rounds left to run; a finished one is extended by raising ``rounds``."""
    if done >= rounds:
        raise ConfigError(f"--resume {out}: all {done} rounds are done; add --rounds N (N > {done}) to extend it")


def resume_problems(cfg) -> list[str]:
    """Why the run in ``cfg.out`` cannot be resumed with ``cfg`` (empty when it can)."""
    out = Path(cfg.out)
    if not (out / "config.json").is_file():
        return [f"--resume {out}: no run there (no config.json)"]
    metrics = out / "metrics.jsonl"
    done = (
        [json.loads(line)["round"] for line in metrics.read_text().splitlines() if line.strip()]
        if metrics.is_file()
        else []
    )
    latest = _latest(out)
    if latest is None:
        if any(r >= 1 for r in done):
            return [
                f"--resume {out}: metrics.jsonl has rounds up to {max(done)} but checkpoint/ is missing, so the "
                "run cannot go on where it stopped; restore checkpoint/ or start again with --overwrite"
            ]
        return []  # stopped before round 1 ended: starting again loses nothing
    saved = json.loads((out / "checkpoint" / latest["folder"] / "state.json").read_text()).get("config")
    if saved is None:
        return []  # a checkpoint written before configs were kept with it
    now = cfg.to_record()
    differ = [k for k in now if k not in PER_FOLDER and k in saved and saved[k] != now[k]]
    if differ:
        what = ", ".join(f"{k} {saved[k]!r} (now {now[k]!r})" for k in differ)
        return [
            f"--resume {out}: the settings differ from the checkpoint's: {what}; restore config.json, "
            "or start again with --overwrite"
        ]
    return []


def load_checkpoint(out: Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``out``, or None when there is none."""
    latest = _latest(out)
    if latest is None:
        return None
    folder = Path(out) / "checkpoint" / latest["folder"]
    state = json.loads((folder / "state.json").read_text())
    torch.set_rng_state(load_file(str(folder / "rng.safetensors"))["torch"])
    return Checkpoint(
        round=int(state["round"]),
        global_state=load_file(str(folder / "global.safetensors")),
        strategy_tensors=load_file(str(folder / "strategy.safetensors"))
        if (folder / "strategy.safetensors").is_file()
        else {},
        strategy_values=state.get("strategy", {}),
        ledger=Ledger.read_csv(folder / "ledger.csv"),
        metrics=state["metrics"],
    )


def _fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
