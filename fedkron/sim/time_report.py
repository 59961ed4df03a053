"""The comparison's simulated-time section (runs made with ``--devices``): how long each run took on
the device mix, which part of it was transfer and which compute, and the simulated time each spent
to first reach a target accuracy, against every LoRA baseline.

Read from each run's ``metrics.jsonl`` (``sim_seconds`` per round, with its critical-path split);
nothing here re-simulates. Default target: the LoRA fp32 baseline's *final* accuracy minus 1 point.
"""

from __future__ import annotations

from fedkron.devices.timing import time_to_accuracy

HOUR = 3600.0
SPLIT = (("sim_transfer_seconds", "transfer"), ("sim_compute_seconds", "compute"), ("sim_wait_seconds", "wait"))


def has_sim_time(row: dict) -> bool:
    return any(m.get("sim_seconds") is not None for m in row["metrics"])


def default_time_target(rows: list[dict]) -> float | None:
    """The LoRA fp32 baseline's final accuracy minus 1 point (the all-linear, per-factor one first)."""
    lora = [
        r for r in rows if r["method"] == "lora" and r["codec"].startswith("fp32") and r["final_accuracy"] is not None
    ]
    lora.sort(key=lambda r: (r["targets"] != "all-linear", r["aggregation"] != "per-factor"))
    return lora[0]["final_accuracy"] - 0.01 if lora else None


def add_time_figures(rows: list[dict], target: float | None) -> None:
    """Per run: simulated hours in total and split along the critical path, hours to ``target``."""
    for r in rows:
        if not has_sim_time(r):
            continue
        trained = [m for m in r["metrics"] if m["round"] >= 1]
        total = sum(m.get("sim_seconds") or 0.0 for m in trained)
        r["sim_hours_total"] = total / HOUR
        for key, name in SPLIT:
            r[f"sim_{name}_hours"] = sum(m.get(key) or 0.0 for m in trained) / HOUR
        r["sim_transfer_share"] = r["sim_transfer_hours"] * HOUR / total if total else None
        reached = time_to_accuracy(trained, target) if target is not None else None
        r["hours_to_target"] = None if reached is None else reached / HOUR
        r["devices"] = r["config"].get("devices", "")


def time_section(rows: list[dict], target: float | None) -> str:
    """Markdown: one row per run with simulated time, then speed-ups to the target per baseline."""
    timed = [r for r in rows if "sim_hours_total" in r]
    if not timed:
        return ""
    mixes = sorted({r["devices"] for r in timed})
    tgt = "none (no LoRA fp32 baseline)" if target is None else f"{100 * target:.1f}%"
    lines = [
        f"## Simulated time on `{'`, `'.join(mixes)}`",
        "",
        (
            f"Target accuracy {tgt} (the LoRA fp32 baseline's final − 1 point unless given). A round lasts "
            "until its slowest aggregated client finishes (download + compute + upload on its device); "
            "transfer / compute / wait split that critical path."
        ),
        "",
        "| run | simulated h | transfer h | compute h | wait h | transfer share | h to target | final acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in timed:
        share = "–" if r["sim_transfer_share"] is None else f"{100 * r['sim_transfer_share']:.1f}%"
        hours = " | ".join(
            f"{r[k]:.3g}" for k in ("sim_hours_total", "sim_transfer_hours", "sim_compute_hours", "sim_wait_hours")
        )
        lines.append(f"| {r['run']} | {hours} | {share} | {_h(r['hours_to_target'])} | {_pct(r['final_accuracy'])} |")
    baselines = [r for r in timed if r["method"] == "lora"]
    for b in baselines:
        for r in timed:
            if r is not b and r["hours_to_target"] and b["hours_to_target"]:
                r[f"time_to_target_speedup_vs_{b['run']}"] = b["hours_to_target"] / r["hours_to_target"]
    if baselines:
        lines += [
            "",
            "Speed-up to the target (baseline's simulated hours / the run's):",
            "",
            "| run | " + " | ".join(f"vs {b['run']}" for b in baselines) + " |",
            "|" + "---|" * (len(baselines) + 1),
        ]
        for r in timed:
            cells = ["reference" if r is b else _x(r.get(f"time_to_target_speedup_vs_{b['run']}")) for b in baselines]
            lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _h(value) -> str:
    return "not reached" if value is None else f"{value:.3g}"


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _x(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


CSV_KEYS = [
    "devices",
    "sim_hours_total",
    "sim_transfer_hours",
    "sim_compute_hours",
    "sim_wait_hours",
    "sim_transfer_share",
    "hours_to_target",
]
