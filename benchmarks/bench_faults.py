"""Fault injection: 20 % of clients send garbage; does the run survive, and what does it cost?

    python benchmarks/bench_faults.py                  # SST-2 from shared data (or boolq), MiniLM-L6
    python benchmarks/bench_faults.py --clients 10 --rounds 3

Runs on the real simulation engine: (1) clean, per-factor FedAvg; (2) faulty clients, plain
FedAvg; (3) faulty clients, robust aggregation (``--robust``, default trimmed-mean; optional
``--clip-norm``). Faulty clients cycle through ×100 updates, sign-flipped updates (both
well-formed: only robust aggregation stops them), NaN payloads and wrong shapes (rejected by
validation). Prints a table (final accuracy, rejected/failed per run) and one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAULT_CYCLE = "scale-100,sign-flip,nan-scales,wrong-shape"  # well-formed attacks first: they pass validation


def main() -> None:
    from fedkron.client.faulty import make_faulty_app
    from fedkron.config import RunConfig, default_data_dir
    from fedkron.sim.simulate import run_sim

    data_dir = default_data_dir()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="sst2" if data_dir else "boolq")
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=15)
    p.add_argument("--bad-share", type=float, default=0.2)
    p.add_argument("--robust", default="trimmed-mean", choices=["median", "trimmed-mean"])
    p.add_argument("--clip-norm", type=float, default=0.0, help="0 = the median honest norm is unknown: off")
    p.add_argument("--faults", default=FAULT_CYCLE, help="faults the bad clients cycle through")
    p.add_argument("--out", default="results/bench-faults")
    args = p.parse_args()

    base = RunConfig(model=args.model, task=args.task, clients=args.clients, rounds=args.rounds,
                     local_steps=args.local_steps, data_dir=data_dir if args.task != "boolq" else "",
                     trim_fraction=max(args.bad_share, 0.1), clip_norm=args.clip_norm)
    n_bad = max(1, round(args.bad_share * args.clients))
    cycle = args.faults.split(",")
    faults = {pid: cycle[i % len(cycle)] for i, pid in enumerate(range(args.clients - n_bad, args.clients))}
    runs = {
        "clean / fedavg": (dataclasses.replace(base, out=f"{args.out}/clean"), None),
        "faulty / fedavg": (dataclasses.replace(base, out=f"{args.out}/faulty-fedavg"), faults),
        f"faulty / {args.robust}": (dataclasses.replace(base, aggregation=args.robust, out=f"{args.out}/faulty-robust"), faults),
    }
    results = {}
    for label, (cfg, fault_map) in runs.items():
        summary = run_sim(cfg, client_app=make_faulty_app(fault_map) if fault_map else None)
        rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
        results[label] = {"final_accuracy": summary["final_accuracy"], "status": summary["status"],
                          "rejected": sum(r["rejected"] for r in rows), "failed": sum(r["failed"] for r in rows),
                          "accuracy_per_round": [r["accuracy"] for r in rows]}
    clean = results["clean / fedavg"]["final_accuracy"]
    print(f"{'run':<24} {'final acc':>9} {'Δ vs clean':>10} {'rejected':>8} {'failed':>6}")
    for label, r in results.items():
        print(f"{label:<24} {100 * r['final_accuracy']:8.1f}% {100 * (r['final_accuracy'] - clean):+9.1f}  "
              f"{r['rejected']:>8} {r['failed']:>6}")
    print(json.dumps({"faults": faults, "config": base.to_record(), "results": results}))


if __name__ == "__main__":
    main()
