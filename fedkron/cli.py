"""The ``fedkron`` command: parses flags into one RunConfig and hands it on.

fedkron sim       one simulated federation (Ray), the embedded offline default with no flags
fedkron compare   several methods/codecs on the same task, partition and client schedule
                  (the offline default: Kron-LoRA nf4 vs LoRA-8 fp32 and FlowerTune on SST-2)
fedkron frontier  the bytes–accuracy frontier: run configs (method, codec, rank, targets) over
                  paired seeds, each method's Pareto front, bytes to a target, savings decomposed
fedkron export    a finished run's adapter as a PEFT or fedkron folder, or a merged model
fedkron evaluate  a finished run's adapter scored after a round trip through each precision
fedkron continual tasks in sequence (each stage from the last one's adapter), a retention matrix
fedkron deploy    certificates, node keys and SuperLink/SuperNode commands for real edge nodes
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from fedkron.logs import quiet_third_party
from fedkron.runconfig.choices import PER_METHOD_FIELDS as _PER_METHOD
from fedkron.runconfig.choices import PER_TASK_FIELDS as _PER_TASK
from fedkron.runconfig.fields import ConfigError, RunConfig, bits_to_codec
from fedkron.server.ledger import MB

CLI_ONLY = {  # flags that are not run-config fields: sugar and output
    "--bits": "uplink bits: 4 = nf4 (or `--uplink fp4`), 8 = int8, 16 = fp16, 32 = fp32",
    "--verbose": "show Flower's, Ray's and transformers' own logs",
}


def default_text(f: dataclasses.Field) -> str:
    """How a field's default reads in ``--help`` and in docs/cli.md's flag table."""
    if f.name in _PER_TASK:
        return "per task"
    if f.name in _PER_METHOD:
        return "per method"
    if f.type in ("bool", bool):
        return "on" if f.default else "off"
    if f.name == "out":
        return "results/<task>-<method>-<codec>"
    return str(f.default) if f.default != "" else "–"


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field (its help, choices and group), plus the CLI-only ones."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        choices = meta.get("choices")
        text = meta["help"] + (f"; one of {', '.join(choices)}" if choices else "") + f" (default {default_text(f)})"
        text = text.replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:  # choices are checked with every other value, so all problems are reported at once
            kind = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            aliases = ("--quant",) if f.name == "uplink" else ()  # deprecated name, until 0.3
            group.add_argument(
                flag, *aliases, type=kind, default=None, help=text, metavar=flag[2:].split("-")[-1].upper()
            )
        if f.name == "uplink":
            group.add_argument("--bits", type=int, choices=(4, 8, 16, 32), help=CLI_ONLY["--bits"] + " (default 4)")
    groups["output"].add_argument("--verbose", action="store_true", help=CLI_ONLY["--verbose"])


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Flags → RunConfig; flags not given keep the config (and task) defaults."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if f.metadata.get("cli", True) and getattr(args, f.name, None) is not None
    }
    zeros = [
        f"--{k.replace('_', '-')} must be ≥ 1 (got 0; leave it out for the task's default)"
        for k in _PER_TASK
        if k != "eval_samples" and values.get(k) == 0
    ]
    if zeros:
        raise ConfigError("invalid run config:\n  - " + "\n  - ".join(zeros))
    if args.bits is not None:
        values["uplink"] = bits_to_codec(args.bits, args.uplink)
    cfg = RunConfig.from_mapping(values)
    if args.out is None:
        cfg.out = f"results/{cfg.task}-{cfg.method}-{cfg.uplink}"
    return cfg


def flag_table() -> str:
    """docs/cli.md's flag table of ``fedkron sim``, made from the parser (a test keeps them equal)."""
    parser = build_parser()
    sim = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "sim")[1]
    defaults = {
        "--" + f.name.replace("_", "-"): default_text(f) for f in dataclasses.fields(RunConfig) if f.metadata["cli"]
    }
    rows = ["| flag | meaning | default |", "|---|---|---|"]
    for action in sim._actions:
        flags = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
        if not flags or flags[0] == "--help":
            continue
        meaning = (action.help or "").replace("%%", "%").split(" (default ")[0]
        default = defaults.get(flags[0], "off" if flags[0] == "--verbose" else "4" if flags[0] == "--bits" else "")
        shown = (
            f"`{flags[0]}`, `--no-{flags[0][2:]}`"
            if isinstance(action, argparse.BooleanOptionalAction)
            else f"`{flags[0]} {action.metavar}`"
            if flags[0] == "--resume"
            else f"`{flags[0]}`"
        )
        rows.append(f"| {shown} | {meaning.replace('|', '/')} | {default or '–'} |")
    return "\n".join(rows)


def cmd_sim(args: argparse.Namespace) -> int:
    # Imports inside the commands: each command loads only its own stack (Ray, Flower's engine,
    # the deploy tools), so `fedkron --help` and a refused flag answer at once.
    from fedkron.server.progress import format_round  # here: see cmd_sim
    from fedkron.sim.simulate import RunFailed, SimulationInterrupted, run_sim  # here: see cmd_sim

    cfg = resume_config(args) if args.resume else config_from_args(args).resolved()
    print(
        f"fedkron sim: {cfg.method} on {cfg.task} ({cfg.model}), uplink {cfg.uplink}, "
        f"{cfg.clients} clients × {cfg.rounds} rounds × {cfg.local_steps} local steps → {cfg.out}",
        flush=True,
    )
    try:
        summary = run_sim(cfg, progress=lambda row: print(format_round(row), flush=True), verbose=args.verbose)
    except SimulationInterrupted as stopped:
        return interrupted(stopped, [cfg.out])
    except RunFailed as err:  # the summary in the results folder says the same
        print(f"fedkron: {err}", file=sys.stderr)
        return 1
    print(summary_text(summary, cfg.out))
    return 0


def interrupted(stopped, folders: list[str]) -> int:
    """What an interrupted simulation prints (its last run's summary, how to go on); the exit code
    is 128 + the signal's number, as a shell reports a process ended by it."""
    last = stopped.summaries[-1] if stopped.summaries else {}
    if "seconds" in last:
        print(summary_text(last, last.get("out", folders[-1])))
    where = " or ".join(folders) if len(folders) <= 2 else f"{folders[0]} …"
    print(f"fedkron: {stopped}; partial results are in {where} (continue with --resume)", file=sys.stderr)
    return 128 + stopped.signum


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The saved config of the run in ``--resume DIR``. Other run flags would change the run; only
    ``--rounds`` may be given, to extend it beyond the rounds it has."""

    from fedkron.server.checkpoint import latest_round, require_rounds_left, saved_config  # here: see cmd_sim

    folder = Path(args.resume)
    given = [
        k
        for k, v in vars(args).items()
        if k not in ("resume", "func", "command", "verbose", "rounds") and v is not None
    ]
    if given:
        raise ConfigError(
            "--resume continues a run with its saved config; drop the other run flags "
            "(only --rounds may be given, to extend the run)"
        )
    record, notice = saved_config(folder)
    if notice:
        print(f"fedkron: {notice}", file=sys.stderr, flush=True)
    cfg = RunConfig.from_mapping(record)
    cfg.resume, cfg.out = True, str(folder)
    if args.rounds is not None:
        cfg.rounds = args.rounds
    cfg = cfg.resolved()
    require_rounds_left(folder, latest_round(folder), cfg.rounds)
    return cfg


def summary_text(s: dict, out: str) -> str:
    acc = s.get("final_accuracy")
    acc_txt = "n/a" if acc is None else f"{100 * acc:.1f}%"
    return "\n".join(
        [
            f"{'done' if s['status'] == 'completed' else 'stopped'}: {s['status']} in {s['seconds']:.0f} s",
            f"  held-out accuracy {acc_txt} (best {100 * (s.get('best_accuracy') or 0):.1f}%, "
            f"before training {100 * (s.get('initial_accuracy') or 0):.1f}%) vs majority-class baseline "
            f"{100 * (s['majority_baseline'] or 0):.1f}%  [{s['eval_note']}]",
            f"  trainable params {s['trainable_params']:,}; uplink {s['bytes_up'] / MB:.3f} MB "
            f"({s['mb_up_per_client_round']:.4f} MB per client-round, {s['codec']}), "
            f"downlink {s['bytes_down'] / MB:.3f} MB",
            f"  results: {out}/ (metrics.jsonl, summary.json, ledger.csv, adapter/, accuracy_and_mb.png)",
        ]
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from fedkron.sim.compare import LoraSettings, parse_runs, run_compare  # here: see cmd_sim

    specs = parse_runs(args.runs)
    base = config_from_args(args)
    out = args.out or f"results/compare-{base.task}"
    print(f"fedkron compare: {', '.join(s.label for s in specs)} on {base.task} ({base.model}) → {out}", flush=True)
    lora = LoraSettings(rank=args.lora_rank, lr=args.lora_lr, targets=args.lora_targets)
    return _report(
        out,
        lambda progress: run_compare(
            base,
            specs,
            out,
            lora=lora,
            resume=args.resume,
            downlink=args.downlink,
            verbose=args.verbose,
            precision_eval=args.precision_eval,
            progress=progress,
        ),
    )


def _report(out: str, work: Callable[[Callable[[str, dict], None]], Path]) -> int:
    """Run a compare-like ``work`` with per-round progress lines, then name its report (or say what
    an interrupted run left in ``out``)."""
    from fedkron.server.progress import format_round  # here: see cmd_sim
    from fedkron.sim.simulate import SimulationInterrupted  # here: see cmd_sim

    try:
        report = work(lambda label, row: print(f"[{label}] {format_round(row)}", flush=True))
    except SimulationInterrupted as stopped:
        return interrupted(stopped, [out])
    print(f"report: {report}")
    return 0


def cmd_frontier(args: argparse.Namespace) -> int:
    from fedkron.sim.compare import LoraSettings, parse_runs  # here: see cmd_sim
    from fedkron.sim.frontier import parse_seeds, run_frontier  # here: see cmd_sim

    if args.seed is not None:
        raise ConfigError("fedkron frontier runs every config at each of --seeds (e.g. --seeds 0-4); drop --seed")
    specs, seeds = parse_runs(args.runs), parse_seeds(args.seeds)
    base = config_from_args(args)
    out = args.out or f"results/frontier-{base.task}"
    print(
        f"fedkron frontier: {len(specs)} configs × {len(seeds)} seeds ({', '.join(s.label for s in specs)}; "
        f"seeds {', '.join(map(str, seeds))}) on {base.task} ({base.model}) → {out}",
        flush=True,
    )
    lora = LoraSettings(rank=args.lora_rank, lr=args.lora_lr, targets=args.lora_targets)
    return _report(
        out,
        lambda progress: run_frontier(
            base,
            specs,
            seeds,
            out,
            lora=lora,
            resume=args.resume,
            downlink=args.downlink,
            verbose=args.verbose,
            target=args.target,
            progress=progress,
        ),
    )


def _add_runs_flags(p: argparse.ArgumentParser, default_runs: str, what: str) -> None:
    """--runs, the LoRA settings and --resume: what compare and frontier both take."""
    p.add_argument(
        "--runs",
        default=default_runs,
        help=f"comma-separated method[:codec][:aggregation][:rN][:targets] runs (the parts after the "
        f"method in any order; targets joined by +; the codec used both ways) (default {default_runs}); "
        "presets: flowertune (LoRA-8 on query,value, fp32: Flower's recipe), ffa-lora[:codec] (LoRA with "
        "A frozen: exact); e.g. kron-lora:nf4:exact,lora:nf4:r8:query+value,lora:fp32",
    )
    p.add_argument("--lora-rank", type=int, default=8, help="rank of the LoRA runs that name none (default 8)")
    p.add_argument("--lora-lr", type=float, help="learning rate of the LoRA runs (default: --lr)")
    p.add_argument("--lora-targets", help="adapted layers of the LoRA runs, e.g. query,value (default: --targets)")
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue the {what} in --out: keep runs finished there with the same "
        "settings, continue a run cut off mid-way from its last checkpoint",
    )


def cmd_export(args: argparse.Namespace) -> int:
    from fedkron.sim.export import export_run  # here: see cmd_sim

    done = export_run(args.run_dir, args.out, args.format, args.merged, args.precision, args.round, args.overwrite)
    print(f"fedkron export: {done.kind} → {done.folder} ({done.why})")
    for name, size in done.files.items():
        print(f"  {name}: {size:,} bytes")
    print(f"  total on disk: {done.total_bytes:,} bytes; how to load it: {done.folder}/fedkron_export.json")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fedkron.sim.precision import evaluate_precisions, parse_precisions, table_text  # here: see cmd_sim

    table = evaluate_precisions(args.run_dir, parse_precisions(args.precisions))
    print(f"fedkron evaluate: {args.run_dir}, final adapter on {table['eval_rows']} held-out rows")
    print(table_text(table))
    print(f"written to {args.run_dir}/summary.json (key precision_robustness)")
    return 0


def _add_export_parsers(sub) -> None:
    from fedkron.sim.export import FORMATS, PRECISIONS  # here: see cmd_sim

    p = sub.add_parser("export", help="a finished run's adapter as a PEFT / fedkron folder, or merged (docs/export.md)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="results folder of a finished `fedkron sim` run")
    p.add_argument("--format", default="peft", help=f"one of {', '.join(FORMATS)} (default peft)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (must be empty or absent)")
    p.add_argument("--merged", action="store_true", help="the base model with ΔW merged (save_pretrained folder)")
    p.add_argument("--precision", default="fp32", help=f"factor precision, one of {', '.join(PRECISIONS)}")
    p.add_argument("--round", type=int, metavar="N", help="the adapter --save-every kept for round N")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("evaluate", help="accuracy of a run's adapter at each precision (docs/export.md)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="results folder of a finished `fedkron sim` run")
    p.add_argument("--precisions", default="fp32,bf16,int8,nf4,fp4", help="comma-separated precisions")
    p.set_defaults(func=cmd_evaluate)


def cmd_continual(args: argparse.Namespace) -> int:
    from fedkron.server.progress import format_round  # here: see cmd_sim
    from fedkron.sim.compare import parse_runs  # here: see cmd_sim
    from fedkron.sim.continual import parse_tasks, run_continual  # here: see cmd_sim
    from fedkron.sim.simulate import SimulationInterrupted  # here: see cmd_sim

    if args.task is not None:
        raise ConfigError("fedkron continual takes --tasks A,B[,C] (the stages, in order), not --task")
    tasks, specs = parse_tasks(args.tasks), parse_runs(args.runs)
    base = config_from_args(args)
    out = args.out or f"results/continual-{'-'.join(tasks)}"
    print(f"fedkron continual: {' → '.join(tasks)} ({base.model}), runs {', '.join(s.label for s in specs)} → {out}")
    try:
        report = run_continual(
            base,
            tasks,
            specs,
            out,
            downlink=args.downlink,
            resume=args.resume,
            verbose=args.verbose,
            progress=lambda label, row: print(f"[{label}] {format_round(row)}", flush=True),
        )
    except SimulationInterrupted as stopped:
        return interrupted(stopped, [out])
    except RuntimeError as err:  # a stage failed: its summary.json says why
        print(f"fedkron: {err}", file=sys.stderr)
        return 1
    print(Path(report).read_text())
    print(f"report: {report} (and continual.json)")
    return 0


def _add_continual(sub) -> None:
    from fedkron.sim.continual import DEFAULT_RUNS  # here: see cmd_sim

    p = sub.add_parser("continual", help="federated stages on tasks in sequence, and a retention matrix")
    p.add_argument("--tasks", required=True, help="comma-separated tasks learnt in this order, e.g. sst2,sentiment")
    p.add_argument(
        "--runs",
        default=DEFAULT_RUNS,
        help=f"comma-separated method:codec[:aggregation] runs, each through every stage (default {DEFAULT_RUNS})",
    )
    p.add_argument(
        "--resume", action="store_true", help="keep stages finished in --out, continue a stage cut off mid-way"
    )
    _add_run_flags(p)
    p.set_defaults(func=cmd_continual)


def build_parser() -> argparse.ArgumentParser:
    from fedkron.sim.compare import DEFAULT_RUNS  # here: see cmd_sim
    from fedkron.sim.frontier import DEFAULT_FRONTIER_RUNS, DEFAULT_SEEDS  # here: see cmd_sim

    parser = argparse.ArgumentParser(
        prog="fedkron", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_sim = sub.add_parser("sim", help="run one simulated federation (Ray)")
    _add_run_flags(p_sim)
    p_sim.add_argument(
        "--resume", metavar="DIR", help="continue the run in results folder DIR from its last completed round"
    )
    p_sim.set_defaults(func=cmd_sim)
    p_cmp = sub.add_parser("compare", help="several methods/codecs on one task, seed and client schedule")
    _add_runs_flags(p_cmp, DEFAULT_RUNS, "compare")
    p_cmp.add_argument(
        "--precision-eval",
        action="store_true",
        help="after the runs, score each final adapter at fp32, bf16, int8, nf4 and fp4 "
        "(fedkron evaluate) and add an adapter-precision section to the report",
    )
    _add_run_flags(p_cmp)
    p_cmp.set_defaults(func=cmd_compare)
    p_fr = sub.add_parser("frontier", help="the bytes–accuracy frontier of run configs over paired seeds")
    _add_runs_flags(p_fr, DEFAULT_FRONTIER_RUNS, "frontier")
    p_fr.add_argument(
        "--seeds",
        default=DEFAULT_SEEDS,
        help=f"seeds every config runs at, e.g. 0-4 or 0,1,2 (default {DEFAULT_SEEDS})",
    )
    p_fr.add_argument(
        "--target",
        type=float,
        help="target accuracy as a fraction, e.g. 0.84 (default: the mean final accuracy of the reference "
        "lora:fp32:r8 − 1 point)",
    )
    _add_run_flags(p_fr)
    p_fr.set_defaults(func=cmd_frontier)
    _add_export_parsers(sub)
    _add_continual(sub)
    sub.add_parser(
        "deploy",
        help="TLS certificates, node keys and SuperLink/SuperNode commands "
        "(fedkron deploy --help; see docs/deployment.md)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["deploy"]:  # its own parser: certificates, keys, SuperLink/SuperNode commands
        from fedkron.deploy import deploy_main

        return deploy_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_third_party()
    try:
        return args.func(args)
    except ConfigError as err:
        parser.exit(2, f"fedkron: {err}\n")
    except KeyboardInterrupt:
        print("interrupted: partial results are in the results folder", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
