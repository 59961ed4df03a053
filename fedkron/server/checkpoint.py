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
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save, save_file

from fedkron.durable import atomic_write, fsync_dir
from fedkron.runconfig.fields import ConfigError
from fedkron.server.ledger import Ledger
from fedkron.server.results import read_metrics, write_atomically

log = logging.getLogger("fedkron")
FOLDER_NAME = re.compile(r"round-(\d+)")
ROUND_ADAPTERS = "adapters"  # --save-every N: the global adapter of rounds N, 2N, … (round-003.safetensors)
ROUND_ADAPTER = re.compile(r"round-(\d+)\.safetensors")


@dataclass
class Checkpoint:
    round: int
    global_state: dict[str, torch.Tensor]
    strategy_tensors: dict[str, torch.Tensor]
    strategy_values: dict
    ledger: Ledger
    metrics: list[dict]
    rng: torch.Tensor | None = None  # torch's RNG state after the round; set again on resume
    config: dict | None = None  # the run config record saved with it (None: written before configs were)


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
    fsync_dir(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    fsync_dir(root, files=False)  # the rename itself on disk before the pointer names it
    write_atomically(root / "latest.json", json.dumps({"round": rnd, "folder": folder.name}))
    for old in root.glob("round-*"):  # keep only the newest complete checkpoint
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def locate_checkpoint(out: Path) -> tuple[Path | None, str | None]:
    """The folder of the newest complete checkpoint under ``out`` (None when there is none) and a
    notice when ``latest.json`` could not be followed but a complete ``round-K`` folder could
    (folders get their name only once complete, so the newest of them is safe to continue from).
    A pointer that names nothing usable, with no folder to fall back on, is a ConfigError."""
    root = Path(out) / "checkpoint"
    pointer, why = root / "latest.json", None
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text())["folder"]
            if not isinstance(name, str) or not FOLDER_NAME.fullmatch(name):
                raise ValueError(f"names {name!r}, not a round-K folder")
        except (ValueError, KeyError, TypeError) as err:
            why = f"checkpoint/latest.json is damaged ({_short(err)})"
        else:
            if _complete(root / name):
                return root / name, None
            why = f"checkpoint/{name}, named by checkpoint/latest.json, is missing or incomplete"
    folders = sorted(
        (f for f in root.glob("round-*") if FOLDER_NAME.fullmatch(f.name) and _complete(f)),
        key=lambda f: int(f.name.split("-")[1]),
    )
    if folders:
        return folders[
            -1
        ], f"{why or 'checkpoint/latest.json is missing'}; continuing from checkpoint/{folders[-1].name}"
    if why:
        raise ConfigError(f"--resume {out}: {why}; restore it, or start again with --overwrite")
    return None, None


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("state.json", "global.safetensors", "rng.safetensors"))


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def latest_round(out: Path) -> int:
    """The round of the newest complete checkpoint under ``out`` (0 when there is none)."""
    folder, _ = locate_checkpoint(out)
    return int(folder.name.split("-")[1]) if folder else 0


def saved_config(out: Path) -> tuple[dict, str | None]:
    """The run config saved in ``out/config.json`` and a notice when that file is damaged and the
    config saved with the newest checkpoint is used instead (the same record, written each round).
    No usable config at all is a ConfigError naming the file."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {out}: no config.json there (not a fedkron results folder)")
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record, None
    except (ValueError, UnicodeDecodeError) as err:
        damage = f"{path} cannot be read ({_short(err)})"
    folder, _ = locate_checkpoint(out)
    config = read_checkpoint(out, folder).config if folder else None
    if not config:
        raise ConfigError(
            f"--resume {out}: {damage}, and no checkpoint keeps the settings; start again with --overwrite"
        )
    return config, f"{damage}; using the settings saved with checkpoint/{folder.name}"


def require_rounds_left(out: Path, done: int, rounds: int) -> None:
    """A resumed run must have rounds left to run; a finished one is extended by raising ``rounds``."""
    if done >= rounds:
        raise ConfigError(f"--resume {out}: all {done} rounds are done; add --rounds N (N > {done}) to extend it")


def resume_problems(cfg) -> list[str]:
    """Why the run in ``cfg.out`` cannot be resumed with ``cfg`` (empty when it can). Damage a crash
    can leave (a cut-off last metrics row, a pointer to a checkpoint that is gone while an older
    complete one is there) is repaired on resume, with a notice."""
    out = Path(cfg.out)
    if not (out / "config.json").is_file():
        return [f"--resume {out}: no run there (no config.json)"]
    try:
        folder, notice = locate_checkpoint(out)
        done, metrics_notice = _metrics_rounds(out / "metrics.jsonl")
        ckpt = read_checkpoint(out, folder) if folder else None
    except ConfigError as err:
        return [str(err)]
    for text in filter(None, (notice, metrics_notice)):
        log.warning("%s", text)
    if ckpt is None:
        if any(r >= 1 for r in done):
            return [
                f"--resume {out}: metrics.jsonl has rounds up to {max(done)} but checkpoint/ is missing, so the "
                "run cannot go on where it stopped; restore checkpoint/ or start again with --overwrite"
            ]
        return []  # stopped before round 1 ended: starting again loses nothing
    saved = ckpt.config
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


def _metrics_rounds(path: Path) -> tuple[list[int], str | None]:
    """The rounds in ``metrics.jsonl`` (a cut-off last line dropped, with a notice)."""
    if not path.is_file():
        return [], None
    try:
        rows, notice = read_metrics(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume {path.parent}: {_short(err)}; start again with --overwrite") from None
    return [r["round"] for r in rows], (notice + " (the resumed run rewrites it)") if notice else None


def load_checkpoint(out: Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``out``, or None when there is none; torch's RNG is
    set to the state saved with it."""
    folder, _ = locate_checkpoint(out)
    if folder is None:
        return None
    ckpt = read_checkpoint(out, folder)
    if ckpt.rng is not None:
        torch.set_rng_state(ckpt.rng)
    return ckpt


def read_checkpoint(out: Path, folder: Path) -> Checkpoint:
    """Every file of the checkpoint in ``folder``; one that cannot be read is a ConfigError naming it."""
    name = "state.json"
    try:
        state = json.loads((folder / name).read_text())
        name = "rng.safetensors"
        rng = load_file(str(folder / name))["torch"]
        name = "global.safetensors"
        global_state = load_file(str(folder / name))
        name = "strategy.safetensors"
        strategy = load_file(str(folder / name)) if (folder / name).is_file() else {}
        name = "ledger.csv"
        ledger = Ledger.read_csv(folder / name)
        name = "state.json"
        ckpt = Checkpoint(
            round=int(state["round"]),
            global_state=global_state,
            strategy_tensors=strategy,
            strategy_values=state.get("strategy", {}),
            ledger=ledger,
            metrics=state["metrics"],
            rng=rng,
            config=state.get("config"),
        )
    except Exception as err:  # a damaged file of any kind: json, safetensors, csv, a missing key
        raise ConfigError(
            f"--resume {out}: checkpoint/{folder.name}/{name} cannot be read ({_short(err)}); "
            "restore it, or start again with --overwrite"
        ) from None
    return ckpt


def round_adapter_path(out: Path, rnd: int) -> Path:
    """Where ``--save-every`` keeps round ``rnd``'s global adapter in the results folder ``out``."""
    return Path(out) / ROUND_ADAPTERS / f"round-{rnd:03d}.safetensors"


def keep_round_adapter(out: Path, rnd: int, global_state: dict[str, torch.Tensor], config: dict) -> Path:
    """Round ``rnd``'s global adapter state (the checkpoint's tensors; the run config in the
    metadata), written atomically: an interrupted write leaves no half file under its name."""
    path = round_adapter_path(out, rnd)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = save(
        {k: v.detach().cpu().contiguous() for k, v in global_state.items()},
        metadata={"format": "pt", "round": str(rnd), "method": str(config.get("method"))},
    )
    return atomic_write(path, data)


def kept_rounds(out: Path) -> list[int]:
    """The rounds whose global adapter ``--save-every`` kept in ``out``, ascending."""
    folder = Path(out) / ROUND_ADAPTERS
    found = [ROUND_ADAPTER.fullmatch(p.name) for p in folder.glob("round-*.safetensors")] if folder.is_dir() else []
    return sorted(int(m.group(1)) for m in found if m)
