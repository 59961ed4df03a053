"""Many clients on one machine: peak memory (every process: driver, Ray daemons, actors) and wall
time per round for 10, 100 and 1,000 registered clients at the same number trained per round.

    python benchmarks/bench_scale.py                                    # MiniLM-L6, 10/100/1000 clients, 4 a round
    python benchmarks/bench_scale.py --model tiny-bert --clients 10,100 --rounds 1   # a quick look
    python benchmarks/bench_scale.py --clients 10000 --rounds 1         # does 10,000 start and finish a round?
    python benchmarks/bench_scale.py --query-partitions                 # ask every node its partition, as a
                                                                        # deployed server must (the old path)
    python benchmarks/bench_scale.py --devices phones-4g                # with device profiles and simulated time

Each size runs in a fresh child process (its own Ray start); this process polls the resident
memory of the child's whole process tree (the driver, which is also the server; GCS, raylet and
the actors are its descendants) every 0.2 s. Per size: peak RSS of the tree and of the driver
alone, wall time of the run and of each round, the driver's CPU seconds (server + Flower's
simulation engine, which polls every registered node's queue every 0.1 s), the seconds the server
spent choosing round 1's clients (discovering the nodes' partitions included) and the query
messages it sent. The headline figure is the peak-RSS ratio of the largest size to the smallest (goal: ≤ 1.10). Sampled
clients per round stay fixed (``--per-round``), so the training work is the same at every size.
Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedkron.runconfig.flags import add_run_flags, run_settings

ROOT = Path(__file__).resolve().parents[1]
# A short run per size: memory and per-round time are what is measured, not accuracy, so 2 rounds
# × 5 local steps on 64-token rows, 64 held-out rows scored.
DEFAULTS = dict(model="minilm-l6", rounds=2, local_steps=5, max_length=64, eval_samples=64)
RUN_FLAGS = (*DEFAULTS, "devices")


def tree_rss(pid: int) -> tuple[int, int, int]:
    """(RSS of ``pid`` and all its descendants, RSS of ``pid`` alone, processes) in bytes."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    total = own = 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except psutil.Error:
            continue
        total += rss
        own = rss if p.pid == pid else own
    return total, own, len(procs)


def run_one(args: argparse.Namespace, clients: int) -> dict:
    """One size in a child process, its process tree's memory polled from here."""
    out = Path(args.out) / f"clients-{clients}"
    cmd = [sys.executable, __file__, "--one", str(clients), "--out", str(out)] + args.passthrough
    peak = {"total": 0, "driver": 0, "procs": 0}
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            total, own, n = tree_rss(child.pid)
            peak.update(total=max(peak["total"], total), driver=max(peak["driver"], own), procs=max(peak["procs"], n))
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout, _ = child.communicate()
    done.set()
    poller.join()
    result = {"clients": clients, "status": f"exit {child.returncode}"}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if lines:
        result.update(json.loads(lines[-1]))
    result.update(
        wall_seconds=time.perf_counter() - t0,
        peak_rss_mb=peak["total"] / 2**20,
        peak_driver_rss_mb=peak["driver"] / 2**20,
        peak_processes=peak["procs"],
    )
    return result


def child_main(args: argparse.Namespace) -> None:
    """Run one simulation and print its per-round figures as one JSON line."""
    from fedkron.runconfig.fields import RunConfig
    from fedkron.server.ledger import Ledger
    from fedkron.sim.simulate import prepared, run_many

    clients = args.one
    cfg = RunConfig(
        **run_settings(args, RUN_FLAGS),
        task="sst2",
        clients=clients,
        fraction=min(1.0, args.per_round / clients),
        batch_size=8,
        out=args.out,
        overwrite=True,
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    (summary,) = run_many([prepared(cfg)], query_partitions=args.query_partitions)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    ledger = Ledger.read_csv(Path(args.out) / "ledger.csv")
    queries = [r for r in ledger.rows if r.kind == "query"]
    trained = [r for r in rows if r["round"] >= 1]
    print(
        json.dumps(
            {
                "status": summary["status"],
                "run_seconds": wall,
                "driver_cpu_seconds": cpu,
                "sampled_per_round": cfg.sampled_per_round(),
                "round_seconds": [r["seconds"] for r in trained],
                "round1_sample_seconds": trained[0].get("sample_seconds") if trained else None,
                "query_messages": len(queries),
                "query_bytes": sum(r.serialized for r in queries),
                "accepted": [r["accepted"] for r in trained],
                "sim_seconds": [r.get("sim_seconds") for r in trained],
            }
        ),
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", default="10,100,1000", help="comma-separated numbers of registered clients")
    p.add_argument("--per-round", type=int, default=4, help="clients trained per round at every size")
    p.add_argument("--query-partitions", action="store_true", help="ask every node its partition (deployment's way)")
    p.add_argument("--out", default="results/bench-scale")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size
    add_run_flags(p, RUN_FLAGS, defaults=DEFAULTS)
    args = p.parse_args()
    if args.one:
        return child_main(args)
    args.passthrough = [f"--per-round={args.per_round}"] + [
        f"--{name.replace('_', '-')}={value}" for name, value in run_settings(args, RUN_FLAGS).items()
    ]
    args.passthrough += ["--query-partitions"] if args.query_partitions else []
    results = [run_one(args, int(n)) for n in args.clients.split(",")]
    base = results[0]["peak_rss_mb"] or float("nan")
    print(
        f"{'clients':>8} {'per round':>9} {'peak RSS MiB':>13} {'vs first':>8} {'driver MiB':>10} {'procs':>5} "
        f"{'round s':>16} {'choose r1 s':>11} {'queries':>7} {'driver CPU s':>12} {'status':>10}"
    )
    for r in results:
        rounds = ", ".join(f"{s:.1f}" for s in r.get("round_seconds", []))
        print(
            f"{r['clients']:>8} {r.get('sampled_per_round', '–'):>9} {r['peak_rss_mb']:13.0f} "
            f"{r['peak_rss_mb'] / base:8.3f} {r['peak_driver_rss_mb']:10.0f} {r['peak_processes']:>5} "
            f"{rounds:>16} {r.get('round1_sample_seconds') or 0:11.2f} {r.get('query_messages', '–'):>7} "
            f"{r.get('driver_cpu_seconds') or 0:12.1f} {r['status']:>10}"
        )
    ratio = results[-1]["peak_rss_mb"] / base
    print(f"peak RSS {results[-1]['clients']} / {results[0]['clients']} clients: {ratio:.3f} (goal ≤ 1.10)")
    print(
        json.dumps(
            {
                "model": args.model,
                "per_round": args.per_round,
                "rounds": args.rounds,
                "query_partitions": args.query_partitions,
                "devices": args.devices,
                "results": results,
                "peak_rss_ratio_last_over_first": ratio,
            }
        )
    )


if __name__ == "__main__":
    main()
