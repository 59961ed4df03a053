"""Kron-LoRA vs LoRA over several seeds: the accuracy gap with its spread, from finished compares.

    for s in 0 1 2; do python benchmarks/bench_compare.py --seed $s --runs kron-lora:nf4:exact,lora:fp32; done
    python benchmarks/bench_compare_seeds.py results/bench-compare-sst2 results/bench-compare-sst2-seed1 ...

A single final round moves ±2 points at Dirichlet 0.5 with 4 clients a round, so "within 1 point"
is only meaningful as a mean over seeds (and over the last rounds). Reads each compare folder's
runs (``<folder>/<run>/metrics.jsonl``) up to ``--rounds`` (default: the shortest run), and prints
per run and seed the final, best and last-3-round mean accuracy and the uplink bytes, then the
mean and standard deviation over seeds, the gap to the LoRA fp32 run and the uplink ratio, as a
table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

BASELINE = "lora-fp32"


def read_run(folder: Path, rounds: int | None) -> dict:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trained = [r for r in rows if r["round"] >= 1 and (rounds is None or r["round"] <= rounds)]
    if not trained:
        raise SystemExit(f"{folder}: no trained rounds in metrics.jsonl")
    accs = [r["accuracy"] for r in trained]
    return {"rounds": len(trained), "final": accs[-1], "best": max(accs), "last3": statistics.fmean(accs[-3:]),
            "bytes_up": sum(r["bytes_up"] for r in trained)}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="bench_compare / fedkron compare output folders, one per seed")
    p.add_argument("--rounds", type=int, default=None, help="score every run at this round (default: shortest run)")
    args = p.parse_args()
    runs = sorted({d.name for f in args.folders for d in f.iterdir() if (d / "metrics.jsonl").is_file()})
    if BASELINE not in runs:
        raise SystemExit(f"every folder needs a {BASELINE} run (found {runs})")
    rounds = args.rounds or min(read_run(f / r, None)["rounds"] for f in args.folders for r in runs
                                if (f / r / "metrics.jsonl").is_file())
    per = {r: [read_run(f / r, rounds) for f in args.folders if (f / r / "metrics.jsonl").is_file()] for r in runs}
    base = per[BASELINE]
    out = {"rounds": rounds, "seeds": len(args.folders), "runs": {}}
    print(f"scored at round {rounds}, {len(args.folders)} seeds (mean ± sd over seeds, accuracy in %)\n")
    print("| run | seeds | final acc | last-3 mean acc | best acc | final gap vs LoRA (points) "
          "| last-3 gap (points) | uplink saving × |")
    print("|---|---|---|---|---|---|---|---|")
    for run, vals in per.items():
        pairs = list(zip(vals, base)) if len(vals) == len(base) else []
        entry = {k: mean_sd([100 * v[k] for v in vals]) for k in ("final", "last3", "best")}
        entry["gap_final"] = mean_sd([100 * (v["final"] - b["final"]) for v, b in pairs]) if pairs else None
        entry["gap_last3"] = mean_sd([100 * (v["last3"] - b["last3"]) for v, b in pairs]) if pairs else None
        entry["uplink_saving"] = mean_sd([b["bytes_up"] / v["bytes_up"] for v, b in pairs]) if pairs else None
        entry["per_seed"] = vals
        out["runs"][run] = entry

        def f(x):
            return "—" if x is None else f"{x[0]:.1f} ± {x[1]:.1f}"
        saving = "—" if entry["uplink_saving"] is None else f"{entry['uplink_saving'][0]:.1f}"
        print(f"| {run} | {len(vals)} | {f(entry['final'])} | {f(entry['last3'])} | {f(entry['best'])} "
              f"| {f(entry['gap_final'])} | {f(entry['gap_last3'])} | {saving} |")
    print()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
