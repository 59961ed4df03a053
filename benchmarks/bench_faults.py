"""Fault injection: what one bad client does to a run with fedkron's default defences, and without.

    python benchmarks/bench_faults.py                       # SST-2 (packaged), MiniLM-L6, 10 clients, 3 rounds
    python benchmarks/bench_faults.py --clients 10 --rounds 5
    python benchmarks/bench_faults.py --model tiny-bert --clients 4 --rounds 2 --local-steps 2 --attacks scale-1e30

One row per default defence: a clean run, then the same federation with one client attacking
(partition 1) with the defence on, and where it can be switched off, off:
- ``claim-examples``: claims 10⁹ examples — capped at the partition the server knows it holds;
- ``overflow``: a well-formed update of norm ~10³² — rejected by the default norm bound
  (``--norm-bound-factor 10``; off: the aggregate overflows and is refused);
- ``scale-100``: a well-formed ×100 update — within reach of the relative norm bound;
- ``scale-1e30``: a well-formed ×10³⁰ update in rounds of **two** replies (``fraction`` 2/clients,
  against a clean run of two a round): the bound's reference is the median of the two norms and
  the last round's reference (at first the initial adapter's norm), so one huge reply of two is
  rejected and never becomes the reference;
- ``claim-eval``: an evaluation reply claiming 10⁹ examples scored at accuracy 1.0 — capped at
  ``--eval-samples`` and ``--max-weight-share`` (the ``fed acc`` column, its highest round; off:
  share 1, all rows);
- ``nan-partition`` / ``huge-header``: a NaN partition id, an .npy header claiming 10¹² values —
  rejected by reading every field (no switch);
- ``raise``: a client that crashes — counted failed, the round goes on.
Every run also scores federated evaluation on half the clients (``fraction_evaluate`` 0.5).
Prints a table (final accuracy, Δ against its clean run, federated accuracy, rejected / failed) and
one JSON object. All runs share one client app that misbehaves only in the attacked runs' folders
(one Ray start per attack).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fedkron.runconfig.flags import add_run_flags, run_settings

ATTACKS = (
    "claim-examples",
    "overflow",
    "scale-100",
    "scale-1e30",
    "claim-eval",
    "nan-partition",
    "huge-header",
    "raise",
)
DEFENCE_OFF = {
    "overflow": {"norm_bound_factor": 0},
    "scale-100": {"norm_bound_factor": 0},
    "scale-1e30": {"norm_bound_factor": 0},
    "claim-examples": {"max_weight_share": 1.0},
    "claim-eval": {"max_weight_share": 1.0},
}
TWO_A_ROUND = ("scale-1e30",)  # attacks measured in rounds of two replies, against their own clean run


RUN_FLAGS = ("model", "clients", "rounds", "local_steps")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The measured setting (docs/results.md): the pretrained model, 10 clients (two replies a round
    # for the two-reply attacks), rounds and steps enough for the clean run to learn.
    add_run_flags(p, RUN_FLAGS, defaults={"model": "minilm-l6", "clients": 10, "rounds": 3, "local_steps": 15})
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--out", default="results/bench-faults")
    return p.parse_args()


def plan(args: argparse.Namespace) -> dict:
    """label → (RunConfig, attack or None, the label of its clean run)."""
    from fedkron.runconfig.fields import RunConfig

    base = RunConfig(
        **run_settings(args, RUN_FLAGS),
        task="sst2",
        fraction=0.5,
        fraction_evaluate=0.5,
        eval_samples=0,
        overwrite=True,
    )
    two = dataclasses.replace(base, fraction=2 / args.clients)
    runs = {"clean": (base, None, "clean")}
    for attack in args.attacks.split(","):
        cfg, clean = (two, "clean / 2 a round") if attack in TWO_A_ROUND else (base, "clean")
        runs.setdefault(clean, (cfg, None, clean))
        runs[f"{attack} / defended"] = (cfg, attack, clean)
        if attack in DEFENCE_OFF:
            runs[f"{attack} / defence off"] = (dataclasses.replace(cfg, **DEFENCE_OFF[attack]), attack, clean)
    return runs


def run_all(runs: dict, out: str) -> dict:
    """Every run, one Ray start per attack (the clean runs go with the first); label → figures."""
    from fedkron.sim.faults import make_faulty_app  # here: it imports the client and Flower (seconds)
    from fedkron.sim.simulate import prepared, run_many

    folders = {label: f"{out}/{label.replace(' / ', '-').replace(' ', '-')}" for label in runs}
    # the attacker is partition 1; its app misbehaves only in runs whose folder names the attack
    cfgs = {label: prepared(dataclasses.replace(cfg, out=folders[label])) for label, (cfg, _, _) in runs.items()}
    results: dict = {}
    for attack in sorted({a for _, a, _ in runs.values() if a}):
        labels = [lab for lab, (_, a, _) in runs.items() if a == attack or (a is None and not results)]
        summaries = run_many([cfgs[lab] for lab in labels], client_app=make_faulty_app({1: attack}, only_in=attack))
        for label, summary in zip(labels, summaries):
            rows = [json.loads(x) for x in (Path(folders[label]) / "metrics.jsonl").read_text().splitlines()]
            results[label] = {
                "final_accuracy": summary.get("final_accuracy"),
                "highest_fed_accuracy": max((r["fed_accuracy"] for r in rows if r.get("fed_accuracy")), default=None),
                "status": summary["status"],
                "rejected": sum(r.get("rejected", 0) for r in rows),
                "failed": sum(r.get("failed", 0) for r in rows),
                "refused_aggregates": sum(bool(r.get("aggregate_refused")) for r in rows),
                "accuracy_per_round": [r.get("accuracy") for r in rows],
            }
    return results


def print_table(runs: dict, results: dict) -> None:
    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}%"

    print(
        "| run | final acc | Δ vs clean (points) | fed acc (highest round) | rejected | failed "
        "| aggregates refused | status |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, (_, _, clean_label) in runs.items():
        r, clean = results[label], results[clean_label]["final_accuracy"]
        acc = r["final_accuracy"]
        delta = "–" if acc is None or clean is None else f"{100 * (acc - clean):+.1f}"
        print(
            f"| {label} | {pct(acc)} | {delta} | {pct(r['highest_fed_accuracy'])} | {r['rejected']} | {r['failed']} | "
            f"{r['refused_aggregates']} | {r['status'][:40]} |"
        )


def main() -> None:
    args = parse_args()
    runs = plan(args)
    results = run_all(runs, args.out)
    print_table(runs, results)
    print(json.dumps({"config": runs["clean"][0].to_record(), "results": results}))


if __name__ == "__main__":
    main()
