"""The results folder of one run: metrics, summary, ledger, final adapter and a plot.

Rows of ``metrics.jsonl`` are appended as each round ends, each with one write that is flushed to
disk (fsync), and a write that fails part-way (a full disk) is cut back, so the file never holds
half a row; should a crash leave one anyway, :func:`read_metrics` drops it and a resume rewrites the
file from the checkpoint. JSON files are replaced atomically (temporary file, fsync, rename). The
ledger and summary are written even when a run fails, so nothing measured is lost.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fedkron.durable import atomic_write
from fedkron.server.ledger import MB


def write_json(path: Path, obj: dict[str, Any]) -> Path:
    """Write ``obj`` as JSON atomically (a reader sees the old file or the new one, never half)."""
    return write_atomically(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_atomically(path: Path, text: str) -> Path:
    """``path`` replaced by ``text`` in one step (:func:`fedkron.durable.atomic_write`): a reader, or
    a resume after a crash or a full disk, sees the old file or the new one, never half."""
    return atomic_write(path, text.encode())


def append_line(path: Path, text: str) -> None:
    """Append one line with a single write, flushed to disk; a write that fails part-way is cut
    back to where the file ended, so a reader never sees half a line from this writer."""
    data = (text + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = os.write(fd, data)
            while written < len(data):  # a short write: the rest, or the error that stopped it
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, end)
            raise
    finally:
        os.close(fd)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of ``metrics.jsonl`` and a notice when its last line was cut off (a crash while it
    was written: that row is dropped; its round is not in any checkpoint). A damaged line before
    the last raises ``ValueError`` naming it."""
    lines = Path(path).read_text(errors="replace").splitlines()
    rows, notice = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("round"), int):
                raise ValueError("not a metrics row")
        except ValueError as err:
            if number < len(lines):
                raise ValueError(f"{path}: line {number} is not a metrics row ({err})") from None
            notice = f"{path}: its last line (line {number}) was cut off; that row is dropped"
            continue
        rows.append(row)
    return rows, notice


class ResultsFolder:
    def __init__(self, out: str | Path, keep: list[dict[str, Any]] | None = None):
        """A fresh run starts fresh files; a resumed one keeps the rows its checkpoint holds."""
        self.path = Path(out)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = list(keep or [])
        write_atomically(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append_metrics(self, row: dict[str, Any]) -> None:
        """One row, on disk before the round's checkpoint is written (the row is kept in ``rows``
        only once it is)."""
        row = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()
        }  # JSON has no NaN
        append_line(self.metrics_path, json.dumps(row))
        self.rows.append(row)

    def write_json(self, name: str, obj: dict[str, Any]) -> Path:
        return write_json(self.path / name, obj)

    def plot(self, title: str) -> Path | None:
        """accuracy per round and cumulative MB per round (up and down), side by side."""
        if not self.rows:
            return None
        import matplotlib  # here: matplotlib takes a second to import and only reports draw

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # here: matplotlib takes a second to import and only reports draw

        rounds = [r["round"] for r in self.rows]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for key, label in (("accuracy", "held-out accuracy"), ("fed_accuracy", "clients' held-out accuracy")):
            points = [(r["round"], 100 * r[key]) for r in self.rows if r.get(key) is not None]
            if points:
                ax1.plot(*zip(*points), marker="o", label=label)
        base = self.rows[0].get("majority_baseline")
        if base is not None:
            ax1.axhline(100 * base, color="grey", ls="--", label="majority class")
        ax1.set(xlabel="round", ylabel="accuracy (%)", title="Accuracy per round")
        ax1.xaxis.get_major_locator().set_params(integer=True)
        ax1.legend()
        ax2.plot(rounds, [r["bytes_up_total"] / MB for r in self.rows], marker="o", label="uplink")
        ax2.plot(rounds, [r["bytes_down_total"] / MB for r in self.rows], marker="s", label="downlink")
        ax2.set(xlabel="round", ylabel="cumulative MB (serialized)", title="Communication")
        ax2.xaxis.get_major_locator().set_params(integer=True)
        ax2.legend()
        fig.suptitle(title)
        fig.tight_layout()
        path = self.path / "accuracy_and_mb.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
