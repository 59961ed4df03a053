"""Fault injection: what one bad client does to a run with fedkron's default defences, and without.

    python benchmarks/bench_faults.py                       # SST-2 (packaged), MiniLM-L6, 10 clients, 3 rounds
    python benchmarks/bench_faults.py --clients 10 --rounds 5

One row per default defence: a clean run, then the same federation with one client attacking
(partition 1) with the defence on, and where it can be switched off, off:
- ``claim-examples``: claims 10⁹ examples — capped at the partition the server knows it holds;
- ``overflow``: a well-formed update of norm ~10³² — rejected by the default norm bound
  (``--norm-bound-factor 10``; off: the aggregate overflows and is refused);
- ``scale-100``: a well-formed ×100 update — within reach of the relative norm bound;
- ``nan-partition`` / ``huge-header``: a NaN partition id, an .npy header claiming 10¹² values —
  rejected by reading every field (no switch);
- ``raise``: a client that crashes — counted failed, the round goes on.
Prints a table (final accuracy, Δ against clean, rejected / failed) and one JSON object. All runs
share one Ray start and one client app that misbehaves only in the attacked runs' folders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the misbehaving ClientApp is test-only code

ATTACKS = ("claim-examples", "overflow", "scale-100", "nan-partition", "huge-header", "raise")
DEFENCE_OFF = {
    "overflow": {"norm_bound_factor": 0},
    "scale-100": {"norm_bound_factor": 0},
    "claim-examples": {"max_weight_share": 1.0},
}


def main() -> None:
    from faulty import make_faulty_app

    from fedkron.runconfig.fields import RunConfig
    from fedkron.sim.simulate import prepared, run_many

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=15)
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--out", default="results/bench-faults")
    args = p.parse_args()

    base = RunConfig(
        model=args.model,
        task="sst2",
        clients=args.clients,
        rounds=args.rounds,
        local_steps=args.local_steps,
        fraction=0.5,
        eval_samples=0,
        overwrite=True,
    )
    runs = {"clean": (base, None)}
    for attack in args.attacks.split(","):
        runs[f"{attack} / defended"] = (base, attack)
        if attack in DEFENCE_OFF:
            runs[f"{attack} / defence off"] = (dataclasses.replace(base, **DEFENCE_OFF[attack]), attack)
    folders = {label: f"{args.out}/{label.replace(' / ', '-').replace(' ', '-')}" for label in runs}
    # the attacker is partition 1; its app misbehaves only in runs whose folder names the attack
    cfgs = [prepared(dataclasses.replace(cfg, out=folders[label])) for label, (cfg, _) in runs.items()]
    results = {}
    for attack in {a for _, a in runs.values() if a}:  # one Ray start per attack: its own client app
        labels = ["clean"] * (not results) + [lab for lab, (_, a) in runs.items() if a == attack]
        todo = [c for lab, c in zip(runs, cfgs) if lab in labels]
        summaries = run_many(todo, client_app=make_faulty_app({1: attack}, only_in=attack))
        for label, summary in zip(labels, summaries):
            rows = [json.loads(x) for x in (Path(folders[label]) / "metrics.jsonl").read_text().splitlines()]
            results[label] = {
                "final_accuracy": summary.get("final_accuracy"),
                "status": summary["status"],
                "rejected": sum(r["rejected"] for r in rows),
                "failed": sum(r["failed"] for r in rows),
                "refused_aggregates": sum(bool(r.get("aggregate_refused")) for r in rows),
                "accuracy_per_round": [r["accuracy"] for r in rows],
            }
    clean = results["clean"]["final_accuracy"]
    print("| run | final acc | Δ vs clean (points) | rejected | failed | aggregates refused | status |")
    print("|---|---|---|---|---|---|---|")
    for label in runs:
        r = results[label]
        acc = r["final_accuracy"]
        print(
            f"| {label} | {'–' if acc is None else f'{100 * acc:.1f}%'} | "
            f"{'–' if acc is None else f'{100 * (acc - clean):+.1f}'} | {r['rejected']} | {r['failed']} | "
            f"{r['refused_aggregates']} | {r['status'][:40]} |"
        )
    print(json.dumps({"config": base.to_record(), "results": results}))


if __name__ == "__main__":
    main()
