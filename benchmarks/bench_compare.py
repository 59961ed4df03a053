"""Communication vs accuracy, Kron-LoRA against LoRA, on real data (the issue's evidence run).

    python benchmarks/bench_compare.py                       # SST-2, 20 clients, Dirichlet 0.5, 10 rounds
    python benchmarks/bench_compare.py --task arc-easy --mc-head dual --runs kron-lora:nf4:exact,lora:fp32 --lr 1e-3 --local-loss ce
    python benchmarks/bench_compare.py --fraction 1.0 --local-steps 30   # every client every round
    python benchmarks/bench_compare.py --runs kron-lora:nf4,lora:fp32 --rank 4   # Kron rank 4 vs LoRA-8

Runs ``fedkron compare`` (same partitions, seed and client schedule for every run) with MiniLM-L6
and prints the report table plus one JSON object with the headline ratios: uplink bytes of LoRA-8
fp32 over each Kron-LoRA run, and the accuracy gap in points.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from fedkron.runconfig.fields import RunConfig, default_data_dir
    from fedkron.sim.compare import LoraSettings, parse_runs, run_compare

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2")
    p.add_argument("--runs", default="kron-lora:nf4:exact,kron-lora:nf4,lora:fp32")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--fraction", type=float, default=0.2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--local-steps", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.0, help="0 = each method's default rate")
    p.add_argument("--local-opt", default="adamw", help="adamw | sgd (momentum 0.9)")
    p.add_argument("--rank", type=int, default=0, help="rank of the Kron-LoRA runs (0 = the method's default)")
    p.add_argument("--lora-rank", type=int, default=8, help="rank of the LoRA runs (the baseline is LoRA-8)")
    p.add_argument(
        "--local-loss",
        default="logit-adjusted",
        help="logit-adjusted keeps label-skewed clients' heads balanced (plain 'ce' swings "
        "between classes round to round under Dirichlet 0.5 at fraction 0.2)",
    )
    p.add_argument("--mc-head", default="cross", help="multiple choice: cross | dual (see README)")
    p.add_argument("--partition", default="dirichlet")
    p.add_argument("--dirichlet-alpha", type=float, default=0.5)
    p.add_argument("--eval-samples", type=int, default=0, help="0 = the whole held-out split")
    p.add_argument("--seed", type=int, default=0, help="partition, client schedule and initial factors")
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true", help="keep runs finished in --out with these settings")
    args = p.parse_args()

    data_dir = default_data_dir()
    if not data_dir:
        sys.exit("needs the real task data: set FEDKRON_DATA_DIR (the shared data folder)")
    out = args.out or f"results/bench-compare-{args.task}" + (f"-seed{args.seed}" if args.seed else "")
    base = RunConfig(
        task=args.task,
        data_dir=data_dir,
        clients=args.clients,
        fraction=args.fraction,
        rounds=args.rounds,
        local_steps=args.local_steps,
        partition=args.partition,
        dirichlet_alpha=args.dirichlet_alpha,
        eval_samples=args.eval_samples,
        batch_size=args.batch_size,
        lr=args.lr,
        local_loss=args.local_loss,
        local_opt=args.local_opt,
        rank=args.rank,
        seed=args.seed,
        mc_head=args.mc_head,
    )
    run_compare(
        base,
        parse_runs(args.runs),
        out,
        lora=LoraSettings(rank=args.lora_rank),
        resume=args.resume,
        progress=lambda label, row: print(
            f"[{label}] round {row['round']} acc {100 * row['accuracy']:.1f}%", flush=True
        ),
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
