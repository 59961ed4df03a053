"""Per-round cost of the ClientApp process on real SuperNodes: fresh vs long-lived.

Flower's default SuperNode (``--isolation subprocess``) starts a new ``flwr-clientapp`` process
per message (a query and a train message per client per round here): Python, torch,
transformers and fedkron are imported again, the partition is loaded and tokenized again and the
base model is rebuilt. ``--isolation process`` with fedkron's warm worker
(:mod:`fedkron.deploy.warm_clientapp`) keeps one process per SuperNode, so all of that happens
once. Same loopback deployment for both (SuperLink with TLS + SuperNode authentication, two
SuperNodes, the tiny model so local training is a small share of a round); each mode gets a fresh
federation, so the warm worker's first round includes its own start-up.

Round seconds come from the results folder (``metrics.jsonl``: end of one central evaluation to
the end of the next). Flower itself polls every 3 s on both the SuperNode and the ServerApp side,
so a few seconds per round remain in either mode.

    python benchmarks/bench_deploy_overhead.py [--rounds 4] [--model tiny-bert]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from fedkron.deploy.local import LocalFederation
from fedkron.runconfig.flags import add_run_flags

# The tiny random BERT, so local training is a small share of a round and the ClientApp's start-up
# cost shows; 4 rounds, so rounds 2+ (after the warm worker's own start) have a mean.
DEFAULTS = dict(model="tiny-bert", rounds=4)


def run_mode(root: Path, warm: bool, rounds: int, model: str) -> dict:
    cfg = {
        "model": model,
        "task": "boolq",
        "max-length": 32,
        "local-steps": 2,
        "batch-size": 8,
        "eval-samples": 32,
        "rounds": rounds,
        "clients": 2,
        "out": str(root / "results"),
    }
    with LocalFederation(root) as fed:
        fed.start_superlink()
        keys = fed.make_keys(["n0", "n1"])
        for i, key in enumerate(keys):
            fed.start_supernode(key.name, (i, 2), key=key, warm=warm)
        fed.wait_connected(["n0", "n1"])
        t0 = time.perf_counter()
        summary = fed.run(cfg, timeout=300 + 120 * rounds)
        wall = time.perf_counter() - t0
        tasks = {}  # node → [(task seconds, of it in the app)], first the query, then one per round
        for name in ("n0", "n1"):
            worker = fed.nodes[name].worker
            if worker is not None:
                tasks[name] = [
                    (float(a), float(b))
                    for a, b in re.findall(r"done in ([\d.]+) s, ([\d.]+) s of it in the app", worker.log())
                ]
    if summary["status"] != "completed":
        raise RuntimeError(f"run failed: {summary['status']}")
    rows = [json.loads(line) for line in (root / "results" / "metrics.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in rows if r["round"] >= 1]
    return {
        "mode": "warm worker (--isolation process)" if warm else "fresh process per message (--isolation subprocess)",
        "round_seconds": [round(s, 2) for s in secs],
        "first_round_s": round(secs[0], 2),
        "later_rounds_mean_s": round(statistics.mean(secs[1:]), 2) if len(secs) > 1 else None,
        "run_wall_s": round(wall, 1),
        "worker_tasks": tasks,
        # rounds 2+: the app's own seconds per train task (warm worker only)
        "later_app_seconds_mean": round(statistics.mean(a for t in tasks.values() for _, a in t[2:]), 2)
        if tasks
        else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_flags(p, tuple(DEFAULTS), defaults=DEFAULTS)
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="fedkron-bench-deploy-") as tmp:
        for warm in (False, True):
            results.append(run_mode(Path(tmp) / ("warm" if warm else "cold"), warm, args.rounds, args.model))
    cold, warm = results
    print(f"{'mode':<52} {'round 1 s':>10} {'rounds 2+ mean s':>17}   per round")
    for r in results:
        print(f"{r['mode']:<52} {r['first_round_s']:>10.1f} {r['later_rounds_mean_s']:>17.1f}   {r['round_seconds']}")
    saved = cold["later_rounds_mean_s"] - warm["later_rounds_mean_s"]
    print(
        f"\nper-round overhead removed (rounds 2+): {saved:.1f} s of {cold['later_rounds_mean_s']:.1f} s; "
        f"of the warm rounds, {warm['later_app_seconds_mean']:.2f} s per client is the ClientApp itself"
    )
    print(
        json.dumps(
            {
                "benchmark": "deploy_overhead",
                "rounds": args.rounds,
                "model": args.model,
                "results": results,
                "later_round_seconds_saved": round(saved, 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
