"""Simulated wall time to a target accuracy on edge devices: Kron-LoRA nf4 (exact and per-factor)
against LoRA-8 fp32, on SST-2 with label skew, clients on 4G phones.

    python benchmarks/bench_edge_time.py                # SST-2, 20 clients, Dirichlet 0.5, phones-4g, 10 rounds
    python benchmarks/bench_edge_time.py --devices iot-lte-m   # narrow links: transfer weighs more
    python benchmarks/bench_edge_time.py --over-select 0.3 --round-deadline 600
    python benchmarks/bench_edge_time.py --smoke       # tiny random BERT, 4 clients, 2 rounds: the pipeline only

Runs ``fedkron compare --devices MIX`` (same partitions, seed, client schedule and device draws
for every run): each round's simulated time is download + compute + upload of the slowest
aggregated client, from the real serialized bytes in the ledger and the measured training seconds
(divided by the device's speed). Prints the report's simulated-time table (total, transfer /
compute / wait split of the critical path, hours to the target, speed-up against LoRA-8 fp32) and
one JSON object. Target: ``--target``, else LoRA-8 fp32's final accuracy minus 1 point.

Caveat: compute seconds are measured on this machine while Ray actors share its cores, so they
carry its load; the transfer part is exact for the bytes sent.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from common import FEDERATION, print_round

from fedkron.runconfig.flags import add_run_flags, run_settings

RUN_FLAGS = (*FEDERATION, "devices", "over_select", "round_deadline", "seed")
# The savings federation (common.FEDERATION) on 4G phones: docs/devices.md's pessimistic
# "cellular allowed" mix; --devices iot-lte-m shows the narrow-link case.
DEFAULTS = {**FEDERATION, "devices": "phones-4g"}


def main() -> None:
    from fedkron.runconfig.fields import RunConfig
    from fedkron.sim.compare import LoraSettings, parse_runs, run_compare
    from fedkron.sim.report import write_report

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="kron-lora:nf4:exact,kron-lora:nf4:per-factor,lora:fp32")
    p.add_argument(
        "--target", type=float, default=None, help="target accuracy, e.g. 0.78 (default: LoRA fp32 final − 0.01)"
    )
    p.add_argument("--out", default=None, help="results folder (default results/bench-edge-time-<mix>)")
    p.add_argument("--resume", action="store_true", help="keep runs finished in --out with these settings")
    p.add_argument("--smoke", action="store_true", help="tiny random BERT on the packaged SST-2, 4 clients, 2 rounds")
    add_run_flags(p, RUN_FLAGS, defaults=DEFAULTS)
    args = p.parse_args()

    data_dir = ""  # SST-2 ships inside fedkron
    out = Path(args.out or f"results/bench-edge-time-{Path(args.devices).stem}" + ("-smoke" if args.smoke else ""))
    settings = dict(task="sst2", data_dir=data_dir, **run_settings(args, RUN_FLAGS))
    if args.smoke:
        settings.update(
            model="tiny-bert",
            clients=4,
            fraction=0.5,
            rounds=2,
            local_steps=2,
            eval_samples=32,
            max_length=24,
            batch_size=8,
            partition="iid",
        )
    base = RunConfig(**settings)
    run_compare(
        base,
        parse_runs(args.runs),
        out,
        lora=LoraSettings(),
        resume=args.resume,
        progress=print_round,
    )
    if args.target is not None:
        write_report(out, [out / s.folder for s in parse_runs(args.runs)], time_target=args.target)
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    keys = (
        "sim_hours_total",
        "sim_transfer_hours",
        "sim_compute_hours",
        "sim_wait_hours",
        "sim_transfer_share",
        "hours_to_target",
        "final_accuracy",
        "mb_up_total",
        "mb_down_total",
    )
    runs = {r["run"]: {k: (float(r[k]) if r.get(k) not in (None, "") else None) for k in keys} for r in rows}
    for r in rows:
        runs[r["run"]].update({k: float(v) for k, v in r.items() if k.startswith("time_to_target_speedup") and v})
    print(json.dumps({"config": base.to_record(), "report": str(out / "report.md"), "runs": runs}))


if __name__ == "__main__":
    main()
