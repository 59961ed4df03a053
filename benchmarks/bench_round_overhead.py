"""One round's wall time split into client compute vs everything else, plus run time and peak memory.

    python benchmarks/bench_round_overhead.py                      # sst2 (shared data) or boolq
    python benchmarks/bench_round_overhead.py --task boolq --clients 4 --rounds 3

Client compute is what the clients report (decode + train + encode, ``client-seconds``); with A
Ray actors working in parallel the ideal round takes Σ client-seconds / A. Framework overhead is
the rest of the round's fit phase (broadcast encoding, Ray/Flower transport, decode, validation,
aggregation). Peak memory is sampled over the whole process tree (driver + Ray actors).
Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from fedkron.runconfig.flags import add_run_flags, run_settings

# Two clients (one Ray actor per core on a 2-core machine) × 2 rounds × 20 local steps, so client
# compute is a measurable share of a round.
DEFAULTS = dict(clients=2, rounds=2, local_steps=20, out="results/bench-round-overhead")
RUN_FLAGS = ("task", "model", "method", "uplink", *DEFAULTS)


def _tree_rss() -> int:
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    # Ray workers are children of the raylet, not of us: add every ray:: / flwr worker process.
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if "ClientAppActor" in cmd or cmd.startswith("ray::"):
                total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> None:
    from fedkron.runconfig.fields import RunConfig, default_data_dir
    from fedkron.sim.simulate import run_sim

    data_dir = default_data_dir()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # sst2 from the shared data when it is there, else the packaged BoolQ
    add_run_flags(p, RUN_FLAGS, defaults={**DEFAULTS, "task": "sst2" if data_dir else "boolq"})
    args = p.parse_args()

    cfg = RunConfig(**run_settings(args, RUN_FLAGS), data_dir=data_dir if args.task != "boolq" else "")
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss())
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    summary = run_sim(cfg)
    wall = time.perf_counter() - t0
    done.set()

    actors = min(cfg.clients, os.cpu_count() or 1)  # one CPU per virtual client
    rows = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    per_round = []
    for r in rows[1:]:
        ideal = r["client_seconds"] / actors
        per_round.append(
            {
                "round": r["round"],
                "fit_seconds": r["fit_seconds"],
                "client_seconds_sum": r["client_seconds"],
                "train_seconds_sum": r["train_seconds"],
                "ideal_seconds": ideal,
                "overhead_share": max(0.0, 1 - ideal / r["fit_seconds"]),
                "eval_seconds": r["seconds"] - r["fit_seconds"],
            }
        )
    result = {
        "config": cfg.to_record(),
        "parallel_actors": actors,
        "wall_seconds": wall,
        "peak_rss_mb": peak[0] / 2**20,
        "final_accuracy": summary["final_accuracy"],
        "rounds": per_round,
    }
    print(f"{'round':>5} {'fit s':>8} {'Σ client s':>11} {'ideal s':>8} {'overhead':>9} {'eval s':>7}")
    for r in per_round:
        print(
            f"{r['round']:>5} {r['fit_seconds']:8.1f} {r['client_seconds_sum']:11.1f} {r['ideal_seconds']:8.1f} "
            f"{100 * r['overhead_share']:8.1f}% {r['eval_seconds']:7.1f}"
        )
    print(f"wall {wall:.0f} s, peak memory (driver + actors) {peak[0] / 2**20:.0f} MiB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
