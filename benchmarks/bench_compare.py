"""Communication vs accuracy, Kron-LoRA against LoRA, on real data: one seed of the savings federation.

    python benchmarks/bench_compare.py                       # SST-2, 20 clients, Dirichlet 0.5, 10 rounds
    python benchmarks/bench_compare.py --task arc-easy --mc-head dual --runs kron-lora:nf4:exact,lora:fp32 \
        --lr 1e-3 --local-loss ce
    python benchmarks/bench_compare.py --fraction 1.0 --local-steps 30   # every client every round
    python benchmarks/bench_compare.py --runs kron-lora:nf4,lora:fp32 --rank 4   # Kron rank 4 vs LoRA-8

Runs ``fedkron compare`` (same partitions, seed and client schedule for every run) with MiniLM-L6
and prints the report table plus one JSON object with the headline ratios: uplink bytes of LoRA-8
fp32 over each Kron-LoRA run, and the accuracy gap in points. Defaults: the federation of the savings
evidence (``common.FEDERATION``, docs/results.md); every other run setting is the package's.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from common import FEDERATION, print_round

from fedkron.runconfig.flags import add_run_flags, run_settings

# Run settings this benchmark exposes; defaults: the savings federation (common.FEDERATION).
RUN_FLAGS = (
    "task",
    *FEDERATION,
    "batch_size",
    "lr",
    "local_opt",
    "rank",
    "mc_head",
    "seed",
)


def main() -> None:
    from fedkron.runconfig.fields import RunConfig, default_data_dir
    from fedkron.sim.compare import LoraSettings, parse_runs, run_compare

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="kron-lora:nf4:exact,kron-lora:nf4,lora:fp32", help="method:codec[:aggregation]")
    p.add_argument("--lora-rank", type=int, default=8, help="rank of the LoRA runs (the baseline is LoRA-8)")
    p.add_argument("--out", default=None, help="results folder (default results/bench-compare-<task>[-seed<seed>])")
    p.add_argument("--resume", action="store_true", help="keep runs finished in --out with these settings")
    add_run_flags(p, RUN_FLAGS, defaults=FEDERATION)
    args = p.parse_args()

    data_dir = default_data_dir()
    if not data_dir:
        sys.exit("needs the real task data: set FEDKRON_DATA_DIR (the shared data folder)")
    out = args.out or f"results/bench-compare-{args.task}" + (f"-seed{args.seed}" if args.seed else "")
    base = RunConfig(**run_settings(args, RUN_FLAGS), data_dir=data_dir)
    run_compare(
        base,
        parse_runs(args.runs),
        out,
        lora=LoraSettings(rank=args.lora_rank),
        resume=args.resume,
        progress=print_round,
    )
    rows = list(csv.DictReader(open(Path(out) / "results.csv")))
    lora = next((r for r in rows if r["method"] == "lora" and r["codec"] == "fp32"), None)
    headline = {}
    for r in rows:
        if lora and r is not lora:
            headline[r["run"]] = {
                "uplink_ratio_vs_lora_fp32": int(lora["bytes_up"]) / int(r["bytes_up"]),
                "accuracy_gap_points": 100 * (float(r["final_accuracy"]) - float(lora["final_accuracy"])),
            }
    print(json.dumps({"config": base.to_record(), "runs": rows, "headline": headline}))


if __name__ == "__main__":
    main()
