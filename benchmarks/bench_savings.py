"""Bytes both ways and accuracy: Kron-LoRA against LoRA-8 fp32, FlowerTune's recipe, LoRA-8 at the
same codec and FFA-LoRA, over seeds, with each method's learning rate chosen on a small grid.

    python benchmarks/bench_savings.py run --methods lora-8-fp32,flowertune --lrs 5e-4,1e-3,2e-3 --seeds 0
    python benchmarks/bench_savings.py run --methods kron-r4-exact --lrs 4e-3 --seeds 0,1,2
    python benchmarks/bench_savings.py report              # tables + JSON from every finished run

Every run is an ordinary ``fedkron sim`` results folder under ``--root``
(``<task>/<method>/lr<lr>/seed<seed>``); finished runs are kept, so the grid can be run in pieces.
Defaults (``common.FEDERATION``): SST-2 (packaged copy of GLUE), MiniLM-L6, 20 clients, Dirichlet
0.5, 4 clients a round, 10 rounds × 15 local steps × batch 16, logit-adjusted local loss, all 872
dev rows scored.
The report picks each method's learning rate by its mean last-3-round accuracy over the seeds run
at every rate, then states, against each baseline: total and uplink byte ratios, mean ± sd of the
last-3 accuracy gap, and the bytes (both ways) each run spent to first reach a target accuracy
(default: the LoRA-8 fp32 baseline's best minus 1 point).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from common import FEDERATION

from fedkron.runconfig.flags import add_run_flags

# method label → RunConfig settings (codecs apply both ways)
METHODS = {
    "lora-8-fp32": dict(method="lora", rank=8, aggregation="per-factor", uplink="fp32", downlink="fp32"),
    "flowertune": dict(
        method="lora", rank=8, aggregation="per-factor", targets="query,value", uplink="fp32", downlink="fp32"
    ),
    "lora-8-nf4": dict(method="lora", rank=8, aggregation="per-factor", uplink="nf4", downlink="nf4"),
    "ffa-lora-nf4": dict(method="lora", rank=8, aggregation="exact", uplink="nf4", downlink="nf4"),
    "flowertune-nf4": dict(
        method="lora", rank=8, aggregation="per-factor", targets="query,value", uplink="nf4", downlink="nf4"
    ),
    "kron-r4-exact": dict(method="kron-lora", rank=4, aggregation="exact", uplink="nf4", downlink="nf4"),
    "kron-r6-exact": dict(method="kron-lora", rank=6, aggregation="exact", uplink="nf4", downlink="nf4"),
    "kron-r8-exact": dict(method="kron-lora", rank=8, aggregation="exact", uplink="nf4", downlink="nf4"),
    "kron-r4": dict(method="kron-lora", rank=4, aggregation="per-factor", uplink="nf4", downlink="nf4"),
    "kron-r2": dict(method="kron-lora", rank=2, aggregation="per-factor", uplink="nf4", downlink="nf4"),
    "kron-r4-exact-avgm": dict(
        method="kron-lora",
        rank=4,
        aggregation="exact",
        uplink="nf4",
        downlink="nf4",
        strategy="fedavgm",
        server_momentum=0.5,
    ),
}
BASELINES = ("lora-8-fp32", "flowertune", "lora-8-nf4", "ffa-lora-nf4")


def run_config(root: Path, task: str, method: str, lr: float, seed: int, extra: dict):
    from fedkron.runconfig.fields import RunConfig

    out = root / task / method / f"lr{lr:g}" / f"seed{seed}"
    return RunConfig(
        **{**FEDERATION, "task": task, **extra, **METHODS[method], "lr": lr, "seed": seed, "out": str(out)}
    ).resolved()


def finished(folder: Path) -> bool:
    summary = folder / "summary.json"
    return summary.is_file() and json.loads(summary.read_text())["status"] == "completed"


def cmd_run(args) -> None:
    """Every requested run not finished yet, one after the other on one Ray start."""
    from fedkron.sim.simulate import prepared, run_many

    extra = json.loads(args.extra) if args.extra else {}
    todo = []
    for seed in map(int, args.seeds.split(",")):
        for method in args.methods.split(","):
            lrs = (
                [best_lr(Path(args.root), args.task, method)] if args.lrs == "best" else map(float, args.lrs.split(","))
            )
            for lr in lrs:
                cfg = run_config(Path(args.root), args.task, method, lr, seed, extra)
                if finished(Path(cfg.out)):
                    print(f"kept {cfg.out}", flush=True)
                    continue
                resume = (Path(cfg.out) / "checkpoint" / "latest.json").is_file()
                todo.append(prepared(dataclasses.replace(cfg, resume=resume, overwrite=not resume)))

    def report(cfg):
        def show(r):
            acc = "  n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
            print(
                f"  {Path(cfg.out).relative_to(args.root)} round {r['round']:>2} acc {acc}  "
                f"up {r['bytes_up_total'] / 1e6:.3f} MB  down {r['bytes_down_total'] / 1e6:.3f} MB  "
                f"{r['seconds']:.0f} s",
                flush=True,
            )

        return show

    if todo:
        for summary in run_many(todo, [report(c) for c in todo]):
            print(f"{summary.get('out', '')} {summary['status']}", flush=True)


def finished_runs(root: Path, task: str, method: str = "*") -> dict[str, dict[float, dict[int, dict]]]:
    """method → lr → seed → :func:`read` of every finished run under ``root/task`` (the layout
    :func:`run_config` writes: ``<method>/lr<lr>/seed<seed>``)."""
    runs: dict[str, dict[float, dict[int, dict]]] = {}
    for folder in (root / task).glob(f"{method}/lr*/seed*"):
        if finished(folder):
            name, lr, seed = folder.parts[-3], float(folder.parts[-2][2:]), int(folder.parts[-1][4:])
            runs.setdefault(name, {}).setdefault(lr, {})[seed] = read(folder)
    return runs


def best_lr(root: Path, task: str, method: str) -> float:
    """The learning rate whose finished runs of ``method`` have the best mean last-3 accuracy."""
    by_lr = finished_runs(root, task, method).get(method)
    if not by_lr:
        raise SystemExit(f"--lrs best: no finished run of {method} under {root / task} yet")
    return pick_lr(by_lr)


def pick_lr(by_lr: dict[float, dict[int, dict]]) -> float:
    """The rate with the best mean last-3 accuracy over the seeds run at *every* rate of the grid
    (seeds added later at the chosen rate do not change the choice); all seeds if none is shared."""
    shared = set.intersection(*(set(seeds) for seeds in by_lr.values()))
    return max(
        by_lr, key=lambda lr: statistics.mean(r["last3"] for s, r in by_lr[lr].items() if not shared or s in shared)
    )


def read(folder: Path) -> dict:
    from fedkron.server.ledger import Ledger

    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    ledger = Ledger.read_csv(folder / "ledger.csv")
    cumulative = [r["bytes_up_total"] + r["bytes_down_total"] for r in rows]
    acc = [r["accuracy"] for r in rows]
    return {
        "acc": acc,
        "last3": statistics.mean(acc[-3:]),
        "best": max(acc[1:]),
        "final": acc[-1],
        "up": ledger.total("up"),
        "down": ledger.total("down"),
        "cumulative": cumulative,
        "majority": rows[0]["majority_baseline"],
    }


def bytes_to(run: dict, target: float) -> int | None:
    """Bytes (both ways, from the start) spent when the run first reached ``target`` accuracy."""
    for acc, spent in zip(run["acc"], run["cumulative"]):
        if acc >= target:
            return spent
    return None


def cmd_report(args) -> None:
    runs = finished_runs(Path(args.root), args.task)
    chosen = {}
    for method, by_lr in runs.items():
        lr = pick_lr(by_lr)
        chosen[method] = (lr, by_lr[lr])
    print("| method | lr (grid) | seeds | last-3 acc (mean ± sd) | final acc | best acc | up MB | total MB |")
    print("|---|---|---|---|---|---|---|---|")
    for method, (lr, seeds) in chosen.items():
        grid = ", ".join(f"{x:g}" + ("*" if x == lr else "") for x in sorted(runs[method]))
        l3 = [100 * r["last3"] for r in seeds.values()]
        print(
            f"| {method} | {grid} | {len(seeds)} | {statistics.mean(l3):.1f} ± {_sd(l3):.1f} | "
            f"{statistics.mean(100 * r['final'] for r in seeds.values()):.1f} | "
            f"{statistics.mean(100 * r['best'] for r in seeds.values()):.1f} | "
            f"{statistics.mean(r['up'] for r in seeds.values()) / 1e6:.3f} | "
            f"{statistics.mean(r['up'] + r['down'] for r in seeds.values()) / 1e6:.3f} |"
        )
    out = {"chosen": {m: {"lr": lr, "seeds": sorted(s)} for m, (lr, s) in chosen.items()}, "versus": {}}
    for base in (b for b in BASELINES if b in chosen):
        blr, bseeds = chosen[base]
        targets = ", ".join(
            f"seed {s}: {100 * (args.target or r['best'] - 0.01):.1f}%" for s, r in sorted(bseeds.items())
        )
        print(f"\nagainst {base} (lr {blr:g}; target accuracy {targets}):\n")
        print(
            "| method | seeds | last-3 gap (points, mean ± sd) | total saving × | uplink saving × | "
            "bytes-to-target saving × |"
        )
        print("|---|---|---|---|---|---|")
        for method, (_lr, seeds) in chosen.items():
            common = sorted(set(seeds) & set(bseeds))
            if method == base or not common:
                continue
            gap = [100 * (seeds[s]["last3"] - bseeds[s]["last3"]) for s in common]
            total = [(bseeds[s]["up"] + bseeds[s]["down"]) / (seeds[s]["up"] + seeds[s]["down"]) for s in common]
            up = [bseeds[s]["up"] / seeds[s]["up"] for s in common]
            to_target = []
            for s in common:
                target = args.target if args.target else bseeds[s]["best"] - 0.01
                mine, theirs = bytes_to(seeds[s], target), bytes_to(bseeds[s], target)
                to_target.append(None if mine is None else theirs / mine)
            reached = [x for x in to_target if x is not None]
            tt = (
                f"{statistics.mean(reached):.1f} ({len(reached)}/{len(common)} seeds reached)"
                if reached
                else f"target not reached (0/{len(common)})"
            )
            print(
                f"| {method} | {len(common)} | {statistics.mean(gap):+.1f} ± {_sd(gap):.1f} | "
                f"{statistics.mean(total):.1f} | {statistics.mean(up):.1f} | {tt} |"
            )
            out["versus"].setdefault(base, {})[method] = {
                "seeds": common,
                "last3_gap_points": gap,
                "total_saving": total,
                "uplink_saving": up,
                "bytes_to_target_saving": to_target,
            }
    print(json.dumps(out))


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "report"))
    p.add_argument("--root", default="results/savings")
    p.add_argument("--methods", default="kron-r4-exact,lora-8-fp32,flowertune")
    p.add_argument("--lrs", default="2e-3", help="comma-separated rates, or 'best': each method's best so far")
    p.add_argument("--seeds", default="0")
    p.add_argument("--extra", default="", help='JSON of further RunConfig settings, e.g. \'{"data_dir": "..."}\'')
    p.add_argument("--target", type=float, default=0.0, help="accuracy target (0 = each baseline's best - 1 point)")
    add_run_flags(p, ("task",))  # the rest of the federation: common.FEDERATION (or --extra)
    args = p.parse_args()
    {"run": cmd_run, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
