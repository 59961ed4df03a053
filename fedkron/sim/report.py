"""The comparison report: tables and plots read from run folders (config, ledger, metrics), nothing else.

Every LoRA run in a comparison is a baseline (LoRA-8 fp32, the FlowerTune recipe, LoRA at the same
codec, FFA-LoRA), and every other run is stated against each of them: total bytes (up + down),
uplink bytes, and the bytes each spent to first reach a target accuracy (default: the best LoRA
fp32 baseline's best accuracy minus 1 point).
"""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

from fedkron.server.ledger import MB, Ledger
from fedkron.sim import time_report
from fedkron.sim.plots import comparison_plots

COLUMNS = [
    ("run", "run"),
    ("method", "method"),
    ("targets", "targets"),
    ("codec", "up / down codec"),
    ("aggregation", "aggregation"),
    ("lr", "lr"),
    ("trainable_params", "values sent"),
    ("mb_up_total", "up MB"),
    ("mb_down_total", "down MB"),
    ("mb_total", "total MB"),
    ("final_accuracy", "final acc"),
    ("last3_accuracy", "last-3 acc"),
    ("best_accuracy", "best acc"),
    ("mb_to_target", "MB to target"),
    ("note", "note"),
]
SETTINGS = (
    "model",
    "task",
    "clients",
    "fraction",
    "rounds",
    "local-steps",
    "batch-size",
    "partition",
    "dirichlet-alpha",
    "seed",
    "eval-samples",
    "local-loss",
    "strategy",
)


def read_run(folder: Path) -> dict:
    """One report row from a run folder: bytes from the ledger, accuracy from metrics.jsonl."""
    summary = json.loads((folder / "summary.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    ledger = Ledger.read_csv(folder / "ledger.csv")
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
    trained = [m for m in metrics if m["round"] >= 1 and m.get("accuracy") is not None]
    accs = [m["accuracy"] for m in trained]
    up, down = ledger.total("up"), ledger.total("down")
    aggregation = {"fedavg": "per-factor"}.get(config.get("aggregation"), config.get("aggregation", "per-factor"))
    majority = summary.get("majority_baseline")
    return {
        "run": folder.name,
        "method": summary["method"],
        "targets": config.get("targets", "all-linear"),
        "codec": f"{config.get('uplink')} / {config.get('downlink', 'fp32')}",
        "aggregation": aggregation,
        "lr": config.get("lr"),
        "trainable_params": summary["trainable_params"],
        "config": config,
        "bytes_up": up,
        "bytes_down": down,
        "bytes_total": up + down,
        "mb_up_total": up / MB,
        "mb_down_total": down / MB,
        "mb_total": (up + down) / MB,
        "mb_up_per_client_round": up / max(ledger.count("up"), 1) / MB,
        "mb_down_per_client_round": down / max(ledger.count("down"), 1) / MB,
        "client_rounds": ledger.count("down"),  # training messages sent: the client-rounds paid for
        "values_total": ledger.total("up", "values") + ledger.total("down", "values"),
        "payload_up": ledger.total("up", "payload"),
        "count_bytes_up": ledger.total("up", "count_bytes"),
        "final_accuracy": accs[-1] if accs else None,
        "best_accuracy": max(accs) if accs else None,
        "last3_accuracy": sum(accs[-3:]) / len(accs[-3:]) if accs else None,
        "majority_baseline": majority,
        "seconds": summary["seconds"],
        "status": summary["status"],
        "eval_note": summary.get("eval_note", ""),
        "note": (
            "never above the majority class"
            if accs and majority is not None and max(accs) <= majority + 0.005
            else ""
            if summary["status"] == "completed"
            else summary["status"]
        ),
        "metrics": metrics,
        "precision_robustness": summary.get("precision_robustness"),
    }


def decompose(ref: dict, run: dict) -> dict[str, Fraction] | None:
    """``ref``'s total bytes over ``run``'s, split exactly: total = rounds × adapter × codec, from
    bytes = client-rounds × values per client-round (up + down) × bytes per value. ``rounds`` is
    the client-rounds ratio, ``adapter`` the values-per-client-round ratio, ``codec`` the
    bytes-per-value ratio (framing included: message headers, manifests, block scales, the
    query and evaluation messages). Each side gives ``bytes_total``, ``client_rounds`` and
    ``values_total`` (numbers or Fractions); None when a side lacks values (a ledger from before
    the ``values`` column) or sent nothing."""
    sides = [[Fraction(r[k]) for k in ("bytes_total", "client_rounds", "values_total")] for r in (ref, run)]
    if any(not all(side) for side in sides):
        return None
    (b0, c0, v0), (b1, c1, v1) = sides
    return {
        "total": b0 / b1,
        "rounds": c0 / c1,
        "adapter": (v0 / c0) / (v1 / c1),
        "codec": (b0 / v0) / (b1 / v1),
    }


def decomposition_text(parts: dict[str, Fraction] | None) -> str:
    """``"= 3.9 codec × 2.1 adapter × 1.00 rounds"`` ("" without a decomposition)."""
    if not parts:
        return ""
    return " = " + " × ".join(f"{float(parts[k]):.3g} {k}" for k in ("codec", "adapter", "rounds"))


def is_baseline(row: dict) -> bool:
    return row["method"] == "lora"


def bytes_to(row: dict, target: float) -> int | None:
    """Bytes both ways (all messages so far) when the run's accuracy first reached ``target``."""
    for m in row["metrics"]:
        if m.get("accuracy") is not None and m["round"] >= 1 and m["accuracy"] >= target:
            return m["bytes_up_total"] + m["bytes_down_total"]
    return None


def default_target(rows: list[dict]) -> float | None:
    """The LoRA fp32 baseline's best accuracy minus 1 point (the all-linear one first)."""
    lora = [r for r in rows if is_baseline(r) and r["codec"].startswith("fp32") and r["best_accuracy"] is not None]
    lora.sort(key=lambda r: (r["targets"] != "all-linear", r["aggregation"] != "per-factor"))
    return lora[0]["best_accuracy"] - 0.01 if lora else None


def write_report(
    out: str | Path, folders: list[Path], target: float | None = None, time_target: float | None = None
) -> Path:
    """``report.md``, ``results.csv`` and three plots in ``out`` (with ``--devices`` runs, also their
    simulated time to ``time_target`` and a fourth plot); prints the tables."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)  # also for a report over runs made elsewhere
    rows = [read_run(f) for f in folders if (f / "summary.json").is_file()]
    target = default_target(rows) if target is None else target
    for r in rows:
        spent = bytes_to(r, target) if target is not None else None
        r["bytes_to_target"], r["mb_to_target"] = spent, None if spent is None else spent / MB
    baselines = [r for r in rows if is_baseline(r)]
    savings = savings_table(rows, baselines)
    time_target = time_report.default_time_target(rows) if time_target is None else time_target
    time_report.add_time_figures(rows, time_target)
    timed = time_report.time_section(rows, time_target)
    write_csv(out / "results.csv", rows, baselines, bool(timed))
    settings = settings_text(rows, target)
    table = markdown_table(rows)
    precision = precision_section(rows)
    (out / "report.md").write_text(
        f"# fedkron comparison\n\n{settings}\n\n{table}\n\n## Savings against each baseline\n\n{savings}\n\n"
        "Bytes are serialized Flower message sizes from each run's ledger.csv (both directions, every "
        "message). Each cell: total (up + down) × / uplink × / bytes to reach the target accuracy ×, "
        "then the total split exactly as = codec × adapter × rounds: bytes per value (framing "
        "included), values per client-round (up + down, from each message's manifest) and "
        "client-rounds.\n\n"
        "![accuracy vs MB](accuracy_vs_mb.png)\n\n![accuracy per round](accuracy_per_round.png)\n\n"
        "![bytes per round](bytes_per_round.png)\n"
        + (
            f"\n{timed}\n\n![accuracy vs simulated hours](accuracy_vs_sim_hours.png) "
            "![accuracy vs MB](accuracy_vs_mb.png)\n"
            if timed
            else ""
        )
        + (f"\n{precision}\n" if precision else "")
    )

    comparison_plots(out, rows)
    print(
        f"{settings}\n\n{table}\n\n{savings}"
        + (f"\n\n{timed}" if timed else "")
        + (f"\n\n{precision}" if precision else "")
    )
    return out / "report.md"


def write_csv(path: Path, rows: list[dict], baselines: list[dict], timed: bool) -> None:
    """``results.csv``: the table's columns, the raw byte figures and the savings per baseline."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=csv_keys(baselines, timed), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def csv_keys(baselines: list[dict], timed: bool) -> list[str]:
    """results.csv's columns: the table's, the byte figures, and each saving against each baseline."""
    keys = [k for k, _ in COLUMNS] + [
        "bytes_up",
        "bytes_down",
        "bytes_total",
        "bytes_to_target",
        "client_rounds",
        "values_total",
        "payload_up",
        "count_bytes_up",
        "mb_up_per_client_round",
        "mb_down_per_client_round",
        "majority_baseline",
        "seconds",
        "status",
    ]
    keys += [f"{kind}_saving_vs_{b['run']}" for b in baselines for kind in ("total", "uplink", "to_target")]
    keys += [f"{k}_factor_vs_{b['run']}" for b in baselines for k in ("codec", "adapter", "rounds")]
    if timed:
        keys += time_report.CSV_KEYS + [f"time_to_target_speedup_vs_{b['run']}" for b in baselines]
    return keys


def settings_text(rows: list[dict], target: float | None) -> str:
    if not rows:
        return "No finished run."
    cfg = rows[0]["config"]
    shared = ", ".join(f"{k} {cfg.get(k)}" for k in SETTINGS if k in cfg)
    tgt = "none (no LoRA fp32 baseline)" if target is None else f"{100 * target:.1f}%"
    majority = rows[0]["majority_baseline"]
    return (
        f"Settings: {shared}; accuracy {rows[0]['eval_note']}. Majority class "
        f"{'–' if majority is None else f'{100 * majority:.1f}%'}; target accuracy {tgt} "
        "(the LoRA fp32 baseline's best − 1 point unless given)."
    )


def savings_table(rows: list[dict], baselines: list[dict]) -> str:
    if not baselines:
        return "No LoRA baseline in this comparison."
    head = "| run | " + " | ".join(f"vs {b['run']}" for b in baselines) + " |"
    lines = [head, "|" + "---|" * (len(baselines) + 1)]
    for r in rows:
        cells = []
        for b in baselines:
            if b is r:
                cells.append("reference")
                continue
            total, up = b["bytes_total"] / r["bytes_total"], b["bytes_up"] / r["bytes_up"]
            r[f"total_saving_vs_{b['run']}"], r[f"uplink_saving_vs_{b['run']}"] = total, up
            reach = (
                b["bytes_to_target"] / r["bytes_to_target"] if r["bytes_to_target"] and b["bytes_to_target"] else None
            )
            r[f"to_target_saving_vs_{b['run']}"] = reach
            parts = decompose(b, r)
            for k in ("codec", "adapter", "rounds"):
                r[f"{k}_factor_vs_{b['run']}"] = None if parts is None else float(parts[k])
            cells.append(
                f"{total:.1f}× / {up:.1f}× / " + (f"{reach:.1f}×" if reach else "–") + decomposition_text(parts)
            )
        lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(key: str, value) -> str:
    if value is None or value == "":
        return "–"
    if key.endswith("accuracy"):
        return f"{100 * value:.1f}%"
    if key.startswith("mb_"):
        return f"{value:.3f}"
    if key == "trainable_params":
        return f"{value:,}"
    if key == "lr":
        return f"{value:g}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(_fmt(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def precision_section(rows: list[dict]) -> str:
    """ "Adapter precision": each run's final adapter after a round trip through each precision
    (``fedkron evaluate`` / ``compare --precision-eval``); empty when no run has the table."""
    scored = [r for r in rows if r.get("precision_robustness")]
    if not scored:
        return ""
    lines = [
        "## Adapter precision",
        "",
        "The final global adapter's factors quantized and dequantized (base model and task head unchanged), "
        "scored on the held-out rows; bytes: the adapter file at that precision (fedkron format).",
        "",
        "| run | method | precision | accuracy | Δ vs fp32 | adapter bytes | factor rel. error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in scored:
        table = r["precision_robustness"]["rows"]
        ref = next((p["accuracy"] for p in table if p["precision"] == "fp32"), None)
        for p in table:
            acc = p["accuracy"]
            delta = "–" if acc is None or ref is None else f"{100 * (acc - ref):+.1f} pt"
            lines.append(
                f"| {r['run']} | {r['method']} | {p['precision']} | {_fmt('accuracy', acc)} | {delta} | "
                f"{p['adapter_bytes']:,} | {p['factor_rel_error']:.1e} |"
            )
    return "\n".join(lines)
