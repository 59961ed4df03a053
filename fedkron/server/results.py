"""The results folder of one run: metrics, summary, ledger, final adapter and a plot.

Rows of ``metrics.jsonl`` are appended and flushed as each round ends, and the ledger and summary
are written even when a run fails, so nothing measured is lost.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from fedkron.server.ledger import MB


def write_json(path: Path, obj: dict[str, Any]) -> Path:
    """Write ``obj`` as JSON atomically (a reader sees the old file or the new one, never half)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


class ResultsFolder:
    def __init__(self, out: str | Path, keep: list[dict[str, Any]] | None = None):
        """A fresh run starts fresh files; a resumed one keeps the rows its checkpoint holds."""
        self.path = Path(out)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = list(keep or [])
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def append_metrics(self, row: dict[str, Any]) -> None:
        row = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()
        }  # JSON has no NaN
        self.rows.append(row)
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write_json(self, name: str, obj: dict[str, Any]) -> Path:
        return write_json(self.path / name, obj)

    def plot(self, title: str) -> Path | None:
        """accuracy per round and cumulative MB per round (up and down), side by side."""
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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
