"""The comparison report: a table and plots read from run folders (ledger + metrics), nothing else."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fedkron.server.ledger import MB, Ledger

BASELINE = ("lora", "fp32", "per-factor")
COLUMNS = [
    ("run", "run"), ("method", "method"), ("codec", "codec"), ("aggregation", "aggregation"),
    ("trainable_params", "trainable params"),
    ("mb_up_per_client_round", "up MB / client-round"), ("mb_down_per_client_round", "down MB / client-round"),
    ("mb_up_total", "up MB total"), ("mb_down_total", "down MB total"),
    ("final_accuracy", "final acc"), ("best_accuracy", "best acc"), ("majority_baseline", "majority"),
    ("uplink_saving_vs_lora_fp32", "uplink saving ×"), ("total_saving_vs_lora_fp32", "total saving ×"),
    ("seconds", "wall s"), ("status", "status"),
]


def read_run(folder: Path) -> dict:
    """One report row from a run folder: bytes from the ledger, accuracy from metrics.jsonl."""
    summary = json.loads((folder / "summary.json").read_text())
    ledger = Ledger.read_csv(folder / "ledger.csv")
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
    trained = [m for m in metrics if m["round"] >= 1]
    ups = max(ledger.count("up"), 1)
    downs = max(ledger.count("down"), 1)
    return {
        "run": folder.name, "method": summary["method"], "codec": summary["codec"],
        "aggregation": {"fedavg": "per-factor"}.get(summary.get("aggregation"), summary.get("aggregation", "per-factor")),
        "trainable_params": summary["trainable_params"],
        "bytes_up": ledger.total("up"), "bytes_down": ledger.total("down"),
        "mb_up_total": ledger.total("up") / MB, "mb_down_total": ledger.total("down") / MB,
        "mb_up_per_client_round": ledger.total("up") / ups / MB,
        "mb_down_per_client_round": ledger.total("down") / downs / MB,
        "payload_up": ledger.total("up", "payload"), "count_bytes_up": ledger.total("up", "count_bytes"),
        "final_accuracy": trained[-1]["accuracy"] if trained else None,
        "best_accuracy": max(m["accuracy"] for m in trained) if trained else None,
        "majority_baseline": summary["majority_baseline"], "seconds": summary["seconds"],
        "status": summary["status"], "metrics": metrics,
    }


def write_report(out: str | Path, folders: list[Path]) -> Path:
    """``report.md``, ``results.csv`` and three plots in ``out``; prints the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # also for a report over runs made elsewhere
    rows = [read_run(f) for f in folders if (f / "summary.json").is_file()]
    base = next((r for r in rows if (r["method"], r["codec"], r["aggregation"]) == BASELINE), None)
    for r in rows:
        r["uplink_saving_vs_lora_fp32"] = base["bytes_up"] / r["bytes_up"] if base and r["bytes_up"] else None
        total = r["bytes_up"] + r["bytes_down"]
        r["total_saving_vs_lora_fp32"] = (base["bytes_up"] + base["bytes_down"]) / total if base and total else None
    with (out / "results.csv").open("w", newline="") as fh:
        keys = [k for k, _ in COLUMNS] + ["bytes_up", "bytes_down", "payload_up", "count_bytes_up"]
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows)
    note = ("Bytes are serialized Flower message sizes from each run's ledger.csv (both directions, "
            "every message). Savings are relative to the LoRA fp32 run" + ("" if base else " (none in this comparison)") + ".")
    (out / "report.md").write_text(f"# fedkron comparison\n\n{table}\n\n{note}\n\n"
                                   "![accuracy vs MB](accuracy_vs_mb.png)\n\n![accuracy per round](accuracy_per_round.png)\n\n"
                                   "![bytes per round](bytes_per_round.png)\n")
    _plots(out, rows)
    print(table)
    return out / "report.md"


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if key.endswith("accuracy") or key == "majority_baseline":
        return f"{100 * value:.1f}%"
    if key.startswith("mb_"):
        return f"{value:.4f}"
    if "saving" in key:
        return f"{value:.1f}"
    if key == "seconds":
        return f"{value:.0f}"
    if key == "trainable_params":
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _plots(out: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def figure(name: str, draw, legend_size: float | None = None, **axes) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            draw(ax, r)
        ax.set(**axes)
        ax.legend(fontsize=legend_size)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    def acc_vs_mb(ax, r):
        ms = r["metrics"]
        ax.plot([(m["bytes_up_total"] + m["bytes_down_total"]) / MB for m in ms],
                [100 * m["accuracy"] for m in ms], marker="o", label=r["run"])

    def acc_per_round(ax, r):
        ax.plot([m["round"] for m in r["metrics"]], [100 * m["accuracy"] for m in r["metrics"]], marker="o", label=r["run"])

    def bytes_per_round(ax, r):
        ms = [m for m in r["metrics"] if m["round"] >= 1]
        ax.plot([m["round"] for m in ms], [m["bytes_up"] / MB for m in ms], marker="o", label=f"{r['run']} up")
        ax.plot([m["round"] for m in ms], [m["bytes_down"] / MB for m in ms], ls="--", label=f"{r['run']} down")

    figure("accuracy_vs_mb.png", acc_vs_mb, xscale="symlog", xlabel="cumulative MB communicated (up + down)",
           ylabel="held-out accuracy (%)", title="Accuracy vs communication")
    figure("accuracy_per_round.png", acc_per_round, xlabel="round", ylabel="held-out accuracy (%)",
           title="Accuracy per round")
    figure("bytes_per_round.png", bytes_per_round, legend_size=7, yscale="log", xlabel="round",
           ylabel="MB per round", title="Bytes per round")
