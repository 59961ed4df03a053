"""The frontier report: per config over seeds, each method's Pareto front, bytes to a target and
paired differences, read only from run folders (config.json, summary.json, ledger.csv, metrics).

Accuracy is the held-out accuracy after the last round (``final``; last-3: the mean of the last 3
scored rounds), averaged over seeds with a 95 % t-interval. Bytes are the serialized message sizes
of both directions from each run's ledger. A config's accuracy is compared with the reference's
seed by seed (the runs of one seed share partitions, client schedule and scored rows).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from fractions import Fraction
from pathlib import Path

from fedkron.durable import atomic_write
from fedkron.server.ledger import MB
from fedkron.sim.frontier_verdict import front_bytes, verdict, verdict_table
from fedkron.sim.plots import frontier_plot
from fedkron.sim.report import decompose, decomposition_text, read_run

REFERENCE = "LoRA-8 fp32 all-linear (lora:fp32:r8)"
# Two-sided 95 % quantiles of Student's t by degrees of freedom, used when scipy is missing; a
# df between two rows takes the smaller df's (wider) value.
T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip
CSV_KEYS = (
    "config", "method", "codec", "rank", "targets", "aggregation", "n", "seeds", "final_mean", "final_ci",
    "final_sd", "last3_mean", "last3_ci", "last3_sd", "mb_total", "values_sent", "client_rounds",
    "values_per_client_round", "bytes_per_value", "on_front", "left_out",
)  # fmt: skip
VS_KEYS = (
    "pairs", "acc_diff_mean", "acc_diff_ci", "last3_diff_mean", "last3_diff_ci", "bytes_ratio", "codec", "adapter",
    "rounds",
)  # fmt: skip


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (scipy's when installed)."""
    try:
        from scipy.stats import t  # here: scipy is optional; the table below stands in without it
    except ImportError:
        return T975[max(k for k in T975 if k <= df)] if df < 1000 else 1.960
    return float(t.ppf(0.975, df))


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, half-width of its 95 % t-interval); the half-width is None below 2 values."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def seed_sd(values: list[float]) -> float | None:
    """The seed-to-seed standard deviation (None below 2 values): the protocol's noise."""
    return statistics.stdev(values) if len(values) >= 2 else None


def is_reference(record: dict) -> bool:
    """A run config (config.json's keys) of the reference: LoRA-8 fp32 both ways, all-linear, FedAvg."""
    return (
        record.get("method") == "lora"
        and (record.get("uplink"), record.get("downlink")) == ("fp32", "fp32")
        and int(record.get("rank") or 0) == 8
        and record.get("targets", "all-linear") == "all-linear"
        and record.get("aggregation", "per-factor") in ("per-factor", "fedavg")
    )


def seed_mean_rounds(rows: list[dict]) -> list[dict]:
    """Per training round scored in every seed's run: the seed-mean accuracy and cumulative bytes."""
    per_run = [{m["round"]: m for m in r["metrics"] if m["round"] >= 1 and m.get("accuracy") is not None} for r in rows]
    shared = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    return [
        {
            "round": rnd,
            "accuracy": statistics.fmean(p[rnd]["accuracy"] for p in per_run),
            "bytes_total": statistics.fmean(p[rnd]["bytes_up_total"] + p[rnd]["bytes_down_total"] for p in per_run),
        }
        for rnd in shared
    ]


def aggregate(name: str, runs: list[dict]) -> dict:
    """One config's figures over its seeds (completed runs only; the others counted as left out)."""
    rows = [r for r in runs if r["status"] == "completed" and r["final_accuracy"] is not None]
    cfg = (rows or runs)[0]["config"]
    n = len(rows)
    finals = [r["final_accuracy"] for r in rows]
    lasts = [r["last3_accuracy"] for r in rows if r["last3_accuracy"] is not None]
    final, final_ci = mean_ci(finals)
    last3, last3_ci = mean_ci(lasts)
    sums = {k: sum(r[k] for r in rows) for k in ("bytes_total", "client_rounds", "values_total")}
    means = {k: Fraction(v, n) if n else Fraction(0) for k, v in sums.items()}
    return {
        "config": name,
        "method": (rows or runs)[0]["method"],
        "codec": (rows or runs)[0]["codec"],
        "rank": cfg.get("rank"),
        "targets": cfg.get("targets", "all-linear"),
        "aggregation": (rows or runs)[0]["aggregation"],
        "reference": is_reference(cfg),
        "n": n,
        "seeds": [r["config"].get("seed") for r in rows],
        "left_out": len(runs) - n,
        "final_mean": final,
        "final_ci": final_ci,
        "final_sd": seed_sd(finals),
        "last3_mean": last3,
        "last3_ci": last3_ci,
        "last3_sd": seed_sd(lasts),
        **means,
        "mb_total": float(means["bytes_total"]) / MB,
        "values_sent": (rows or runs)[0]["trainable_params"],
        "values_per_client_round": float(sums["values_total"] / sums["client_rounds"])
        if sums["client_rounds"]
        else None,
        "bytes_per_value": float(sums["bytes_total"] / sums["values_total"]) if sums["values_total"] else None,
        "per_seed": {
            r["config"].get("seed"): {
                "final": r["final_accuracy"],
                "last3": r["last3_accuracy"],
                "bytes": r["bytes_total"],
            }
            for r in rows
        },
        "rounds": seed_mean_rounds(rows),
    }


def pareto_front(configs: list[dict]) -> list[dict]:
    """The configs no other one dominates (no more total bytes and no lower mean final accuracy, one
    of the two strictly), by bytes."""
    scored = [c for c in configs if c["final_mean"] is not None and c["n"]]

    def dominated(c: dict) -> bool:
        return any(
            o is not c
            and o["bytes_total"] <= c["bytes_total"]
            and o["final_mean"] >= c["final_mean"]
            and (o["bytes_total"] < c["bytes_total"] or o["final_mean"] > c["final_mean"])
            for o in scored
        )

    return sorted((c for c in scored if not dominated(c)), key=lambda c: c["bytes_total"])


def bytes_to_target(configs: list[dict], target: float) -> dict:
    """A method's bytes to reach ``target``: ``front``, the fewest total bytes among its configs whose
    mean final accuracy reaches it; ``per_round``, the fewest cumulative bytes at the first round
    whose seed-mean accuracy reaches it (any of its configs). None: not reached."""
    best = front_bytes(configs, {c["config"]: c["final_mean"] for c in configs if c["final_mean"] is not None}, target)
    first = []
    for c in configs:
        hit = next((r for r in c["rounds"] if r["accuracy"] >= target), None)
        if hit:
            first.append({"config": c["config"], "round": hit["round"], "bytes": hit["bytes_total"]})
    return {
        "front": None if best is None else {"config": best[0], "bytes": best[1]},
        "per_round": min(first, key=lambda h: h["bytes"], default=None),
    }


def paired(run: dict, ref: dict) -> dict:
    """``run`` against ``ref``: final- and last-3-accuracy differences per shared seed (mean, 95 % CI),
    the ratio of ``ref``'s mean total bytes to ``run``'s, and that ratio split into codec × adapter ×
    rounds."""
    seeds = [s for s in run["per_seed"] if s in ref["per_seed"]]
    pairs = [(run["per_seed"][s], ref["per_seed"][s]) for s in seeds]
    diff, ci = mean_ci([a["final"] - b["final"] for a, b in pairs])
    diff3, ci3 = mean_ci([a["last3"] - b["last3"] for a, b in pairs if None not in (a.get("last3"), b.get("last3"))])
    parts = decompose(ref, run)
    ratio = float(ref["bytes_total"] / run["bytes_total"]) if run["bytes_total"] else None
    return {
        "vs": ref["config"],
        "pairs": len(seeds),
        "acc_diff_mean": diff,
        "acc_diff_ci": ci,
        "last3_diff_mean": diff3,
        "last3_diff_ci": ci3,
        "bytes_ratio": ratio,
        **{k: None if parts is None else float(parts[k]) for k in ("codec", "adapter", "rounds")},
        "decomposition": decomposition_text(parts),
    }


def best_lora(run: dict, configs: list[dict]) -> dict | None:
    """The LoRA config with the best mean final accuracy at ``run``'s codecs (None: none)."""
    lora = [c for c in configs if c["method"] == "lora" and c["codec"] == run["codec"] and c["final_mean"] is not None]
    return max(lora, key=lambda c: c["final_mean"], default=None)


def per_factor_twin(run: dict, configs: list[dict]) -> dict | None:
    """The same adapter (method, codec, rank, targets) with per-factor aggregation, for a config that
    aggregates otherwise (alternating, exact): what its aggregation costs or saves."""
    if run["aggregation"] == "per-factor":
        return None
    same = ("method", "codec", "rank", "targets")
    return next(
        (c for c in configs if c["aggregation"] == "per-factor" and all(c[k] == run[k] for k in same) and c["n"]),
        None,
    )


def analyse(folders: list[Path], target: float | None = None) -> dict:
    """Everything the report states, from the run folders (``OUT/seed<s>/<config>``)."""
    groups: dict[str, list[dict]] = {}
    for folder in folders:
        if (folder / "summary.json").is_file():
            groups.setdefault(folder.name, []).append(read_run(folder))
    configs = [aggregate(name, runs) for name, runs in groups.items()]
    ref = next((c for c in configs if c["reference"] and c["final_mean"] is not None), None)
    methods = sorted({c["method"] for c in configs})
    fronts = {m: pareto_front([c for c in configs if c["method"] == m]) for m in methods}
    for c in configs:
        c["on_front"] = any(c is f for f in fronts[c["method"]])
        c["vs_reference"] = paired(c, ref) if ref is not None and c is not ref and c["n"] else None
        best = best_lora(c, configs)
        c["vs_best_lora"] = paired(c, best) if best is not None and best is not c and c["n"] else None
        twin = per_factor_twin(c, configs)
        c["vs_per_factor"] = paired(c, twin) if twin is not None and c["n"] else None
    derived = target is None
    if target is None and ref is not None:
        target = ref["final_mean"] - 0.01
    to_target = {
        m: bytes_to_target([c for c in configs if c["method"] == m], target) if target is not None else None
        for m in methods
    }
    return {
        "target": target,
        "reference": None if ref is None else ref["config"],
        "configs": configs,
        "fronts": {m: [c["config"] for c in front] for m, front in fronts.items()},
        "bytes_to_target": to_target,
        "verdict": verdict(configs, target, derived),
        "settings": settings_of(groups),
    }


def settings_of(groups: dict[str, list[dict]]) -> dict:
    """The settings every run shares (model, task, clients, rounds, …) and the seeds."""
    runs = [r for rs in groups.values() for r in rs]
    if not runs:
        return {}
    keys = ("model", "task", "clients", "fraction", "rounds", "local-steps", "batch-size", "partition", "eval-samples")
    shared = {
        k: runs[0]["config"].get(k) for k in keys if all(r["config"].get(k) == runs[0]["config"].get(k) for r in runs)
    }
    shared["seeds"] = sorted({r["config"].get("seed") for r in runs})
    shared["eval_note"] = runs[0]["eval_note"]
    return shared


def _plain(value):
    """JSON-ready: Fractions as floats, seed keys as text."""
    if isinstance(value, Fraction):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf / nan: strict JSON has neither
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_frontier(out: str | Path, folders: list[Path], target: float | None = None) -> Path:
    """``frontier.md``, ``frontier.csv``, ``frontier.json`` and ``frontier.png`` in ``out``; prints the
    markdown. Each file is replaced in one step (a failure leaves the previous one)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = analyse(folders, target)
    atomic_write(out / "frontier.json", json.dumps(_plain(result), indent=1).encode())
    atomic_write(out / "frontier.csv", frontier_csv(result["configs"]).encode())
    text = frontier_markdown(result)
    atomic_write(out / "frontier.md", text.encode())
    frontier_plot(out / "frontier.png", result["configs"], result["fronts"], result["target"])
    print(text)
    return out / "frontier.md"


def frontier_csv(configs: list[dict]) -> str:
    """One row per config: its figures, then those against the reference and the best LoRA."""
    vs = [f"{k}_vs_{w}" for w in ("reference", "best_lora") for k in ("config",) + VS_KEYS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_KEYS) + vs, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for c in configs:
        row = {k: _plain(c[k]) for k in CSV_KEYS}
        row["seeds"] = " ".join(str(s) for s in c["seeds"])
        for w in ("reference", "best_lora"):
            other = c[f"vs_{w}"] or {}
            row[f"config_vs_{w}"] = other.get("vs")
            row.update({f"{k}_vs_{w}": other.get(k) for k in VS_KEYS})
        writer.writerow(row)
    return buf.getvalue()


def _acc(mean: float | None, ci: float | None, signed: bool = False) -> str:
    if mean is None:
        return "–"
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text + (f" ± {100 * ci:.1f}" if ci is not None else "")


def _mb(value: float | None) -> str:
    return "not reached" if value is None else f"{value / MB:.3g} MB"


def frontier_markdown(result: dict) -> str:
    """The report's text: settings and target, the per-config table, bytes to target, the paired tables."""
    s, target = result["settings"], result["target"]
    shared = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("seeds", "eval_note"))
    tgt = "none (no reference run and no --target)" if target is None else f"{100 * target:.1f}%"
    head = (
        f"# fedkron frontier\n\nSettings: {shared}; seeds {s.get('seeds')} (paired: the configs of one seed "
        f"share its partitions, client schedule and scored rows); accuracy {s.get('eval_note', '')}.\n"
        f"Reference: {result['reference'] or 'none'} ({REFERENCE}). Target accuracy: {tgt} "
        "(the reference's mean final accuracy − 1 point unless --target).\n" + noise_line(result)
    )
    return "\n".join(
        [
            head,
            config_table(result["configs"]),
            target_table(result),
            verdict_table(result["verdict"], result["target"]),
            *paired_tables(result["configs"]),
            READING,
        ]
    )


def noise_line(result: dict) -> str:
    """The protocol's noise: the reference's seed-to-seed sd of its final and last-3 accuracy."""
    ref = next((c for c in result["configs"] if c["config"] == result["reference"]), None)
    if ref is None or ref["final_sd"] is None:
        return ""
    last3 = "–" if ref["last3_sd"] is None else f"{100 * ref['last3_sd']:.1f}"
    return (
        f"Protocol noise: the reference's seed-to-seed sd is {100 * ref['final_sd']:.1f} points (final) and "
        f"{last3} (last-3) over {ref['n']} seeds.\n"
    )


def config_table(configs: list[dict]) -> str:
    lines = [
        "## Configs (mean over seeds, ± 95 % t-interval)\n",
        "| config | method | n | final acc % | last-3 acc % | total MB | values sent | client-rounds "
        "| values / client-round | bytes / value | on front |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(configs, key=lambda c: (c["method"], c["bytes_total"])):
        per_cr, per_v = c["values_per_client_round"], c["bytes_per_value"]
        lines.append(
            f"| {c['config']}{' (reference)' if c['reference'] else ''} | {c['method']} | {c['n']}"
            + (f" ({c['left_out']} left out)" if c["left_out"] else "")
            + f" | {_acc(c['final_mean'], c['final_ci'])} | {_acc(c['last3_mean'], c['last3_ci'])} "
            f"| {c['mb_total']:.3f} | {c['values_sent']:,} | {float(c['client_rounds']):g} "
            f"| {'–' if per_cr is None else f'{per_cr:,.0f}'} | {'–' if per_v is None else f'{per_v:.3f}'} "
            f"| {'yes' if c['on_front'] else ''} |"
        )
    return "\n".join(lines) + "\n"


def target_table(result: dict) -> str:
    if result["target"] is None:
        return "## Bytes to target\n\nNo target (no reference run and no --target).\n"
    lines = [
        "## Bytes to target (read off each method's front)\n",
        "| method | front (mean final acc ≥ target) | per round (first round whose seed-mean acc ≥ target) |",
        "|---|---|---|",
    ]
    for method, hit in result["bytes_to_target"].items():
        front, per_round = hit["front"], hit["per_round"]
        a = "not reached" if front is None else f"{_mb(front['bytes'])} ({front['config']})"
        b = (
            "not reached"
            if per_round is None
            else f"{_mb(per_round['bytes'])} ({per_round['config']}, round {per_round['round']})"
        )
        lines.append(f"| {method} | {a} | {b} |")
    return "\n".join(lines) + "\n"


def paired_tables(configs: list[dict]) -> list[str]:
    """Each config against the reference, the best LoRA at its codecs and its per-factor twin; a
    comparison no config has (e.g. no alternating run) is left out rather than shown empty."""
    out = []
    titles = (
        ("vs_reference", "the reference"),
        ("vs_best_lora", "the best LoRA at the same codecs"),
        ("vs_per_factor", "the same adapter with per-factor aggregation"),
    )
    for key, title in titles:
        lines = [
            f"## Paired against {title}\n",
            "| config | vs | seeds paired | Δ final acc (points, ± 95 % CI) | Δ last-3 acc "
            "| total bytes × (= codec × adapter × rounds) |",
            "|---|---|---|---|---|---|",
        ]
        pairs = [(c, c[key]) for c in configs if c[key] is not None]
        for c, p in pairs:
            ratio = "–" if p["bytes_ratio"] is None else f"{p['bytes_ratio']:.3g}×{p['decomposition']}"
            lines.append(
                f"| {c['config']} | {p['vs']} | {p['pairs']} | {_acc(p['acc_diff_mean'], p['acc_diff_ci'], True)} "
                f"| {_acc(p['last3_diff_mean'], p['last3_diff_ci'], True)} | {ratio} |"
            )
        if pairs:
            out.append("\n".join(lines) + "\n")
    return out


READING = """## How to read it

![accuracy vs total MB](frontier.png)

A config is on its method's front when no config of that method sends fewer bytes at a higher mean
final accuracy. Δ acc is the config's accuracy minus the other's, seed by seed (same partitions,
clients and scored rows), its mean with a 95 % t-interval: an interval that holds 0 is no measured
difference; last-3 is the mean of the last 3 scored rounds, less sensitive to a round's swing. The
protocol noise is the scale of this federation's seed-to-seed variation (partitions, schedule);
paired differences cancel what the configs of a seed share, and their intervals decide. "bytes ×" is
the other's mean total bytes (up + down) over this config's: above 1, this config sends fewer. It is
split exactly as codec × adapter × rounds: bytes per value sent (the codec factor includes framing:
message headers, manifests, block scales and the query and evaluation messages), values per
client-round (up + down, counted from each message's manifest) and client-rounds (training messages
sent).
"""
