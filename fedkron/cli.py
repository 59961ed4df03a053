"""The ``fedkron`` command: parses flags into one RunConfig and hands it on.

    fedkron sim       one simulated federation (Ray), the embedded offline default with no flags
    fedkron compare   several methods/codecs on the same task, partition and client schedule
                      (the offline default: Kron-LoRA nf4 vs LoRA fp32 on BoolQ)
    fedkron deploy    certificates, node keys and SuperLink/SuperNode commands for real edge nodes
"""

from __future__ import annotations

import argparse
import sys

from fedkron.config import ConfigError, RunConfig, bits_to_codec

MB = 1_000_000


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    g = p.add_argument_group("model and task")
    g.add_argument("--model", help=f"'minilm-l6' (offline, default), 'tiny-bert', a hub id or a folder (default {d.model})")
    g.add_argument("--task", help=f"task name (default {d.task}); see README for the list")
    g.add_argument("--data-dir", help="local data folder in the layout of shared/data (default: packaged/hub)")
    g.add_argument("--max-length", type=int, help="tokens per example (default: task default)")
    g.add_argument("--eval-samples", type=int, help="held-out rows scored per round, 0 = all (default: per task, 256-384)")
    g.add_argument("--mc-head", help="multiple choice: cross (each context+choice pair scored by a linear head) | "
                   "dual (cosine of context and choice embeddings: keeps a sentence encoder's pretraining) "
                   f"(default {d.mc_head})")
    g = p.add_argument_group("adapter")
    g.add_argument("--method", help=f"kron-lora | krona | lora (default {d.method})")
    g.add_argument("--rank", type=int, help=f"rank r (default {d.rank})")
    g.add_argument("--alpha", type=float, help=f"scaling alpha, s = alpha / r (default {d.alpha})")
    g.add_argument("--shape-policy", help=f"Kronecker factor shapes: paper | peft (default {d.shape_policy})")
    g = p.add_argument_group("communication")
    g.add_argument("--bits", type=int, choices=(4, 8, 16, 32), help="uplink bits: 4 = nf4 (or --quant fp4), 8 = int8, 16 = fp16, 32 = fp32 (default 4)")
    g.add_argument("--quant", help="uplink codec by name: nf4 | fp4 | int8 | fp16 | bf16 | fp32 (overrides --bits' default choice)")
    g.add_argument("--downlink", help=f"codec of the server's broadcast (default {d.downlink})")
    g.add_argument("--block-size", type=int, help="quantisation block size (default: 64 for 4-bit, 256 for int8)")
    g.add_argument("--no-error-feedback", action="store_true", help="do not carry quantisation error to the next update")
    g = p.add_argument_group("federation")
    g.add_argument("--clients", type=int, help="number of simulated clients (default: task default)")
    g.add_argument("--rounds", type=int, help="federated rounds (default: task default)")
    g.add_argument("--fraction", type=float, help=f"share of clients trained per round (default {d.fraction})")
    g.add_argument("--min-replies", type=int, help=f"valid replies a round needs (default {d.min_replies})")
    g.add_argument("--partition", help=f"iid | dirichlet | natural (default {d.partition})")
    g.add_argument("--dirichlet-alpha", type=float, help=f"label-skew concentration (default {d.dirichlet_alpha})")
    g.add_argument("--aggregation", help=f"fedavg (per factor) | exact | median | trimmed-mean (default {d.aggregation})")
    g.add_argument("--server-opt", help=f"sgd | avgm | adam on the averaged update (default {d.server_opt})")
    g.add_argument("--server-lr", type=float, help=f"server learning rate (default {d.server_lr})")
    g.add_argument("--clip-norm", type=float, help="clip each client update to this L2 norm before averaging (0 = off)")
    g.add_argument("--trim-fraction", type=float, help=f"share cut at each end by trimmed-mean (default {d.trim_fraction})")
    g.add_argument("--max-update-norm", type=float, help="reject replies whose update norm exceeds this (0 = no bound)")
    g.add_argument("--round-timeout", type=float, help="seconds to wait for replies in a round (default 3600)")
    g.add_argument("--seed", type=int, help=f"seed for init, partitions, sampling (default {d.seed})")
    g = p.add_argument_group("local training")
    g.add_argument("--local-steps", type=int, help="optimizer steps per client per round (default: task default)")
    g.add_argument("--batch-size", type=int, help=f"(default {d.batch_size})")
    g.add_argument("--lr", type=float, help=f"local learning rate (default {d.lr})")
    g.add_argument("--local-opt", help=f"adamw | sgd (momentum 0.9) (default {d.local_opt})")
    g.add_argument("--local-loss", help="ce | logit-adjusted (each client's loss corrected by its own label "
                   f"prior; for label-skewed partitions) (default {d.local_loss})")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="results folder (default results/<task>-<method>-<codec>)")
    g.add_argument("--verbose", action="store_true", help="show Flower's, Ray's and transformers' own logs")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Flags → RunConfig; flags not given keep the config (and task) defaults."""
    values = {}
    for key in ("model", "task", "data_dir", "max_length", "mc_head", "eval_samples", "method", "rank", "alpha",
                "shape_policy", "downlink", "block_size", "clients", "rounds", "fraction", "min_replies",
                "partition", "dirichlet_alpha", "aggregation", "server_opt", "server_lr", "clip_norm",
                "trim_fraction", "max_update_norm", "round_timeout", "seed",
                "local_steps", "batch_size", "lr", "local_loss", "local_opt", "out"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    if args.bits is not None:
        values["quant"] = bits_to_codec(args.bits, args.quant)
    elif args.quant is not None:
        values["quant"] = args.quant
    if args.no_error_feedback:
        values["error_feedback"] = False
    cfg = RunConfig.from_mapping(values)
    if args.out is None:
        cfg.out = f"results/{cfg.task}-{cfg.method}-{cfg.quant}"
    return cfg


def cmd_sim(args: argparse.Namespace) -> int:
    from fedkron.sim.progress import format_round
    from fedkron.sim.simulate import run_sim

    cfg = resume_config(args) if args.resume else config_from_args(args).resolved()
    print(f"fedkron sim: {cfg.method} on {cfg.task} ({cfg.model}), uplink {cfg.quant}, "
          f"{cfg.clients} clients × {cfg.rounds} rounds × {cfg.local_steps} local steps → {cfg.out}", flush=True)
    summary = run_sim(cfg, progress=lambda row: print(format_round(row), flush=True), verbose=args.verbose)
    print(summary_text(summary, cfg.out))
    return 0


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The saved config of the run in ``--resume DIR``. Other run flags would change the run; only
    ``--rounds`` may be given, to extend it beyond the rounds it has."""
    import json
    from pathlib import Path

    from fedkron.server.checkpoint import latest_round, require_rounds_left

    folder = Path(args.resume)
    saved = folder / "config.json"
    if not saved.is_file():
        raise ConfigError(f"--resume {folder}: no config.json there (not a fedkron results folder)")
    given = [k for k, v in vars(args).items() if k not in ("resume", "func", "command", "verbose", "rounds",
                                                           "no_error_feedback", "bits", "quant") and v is not None]
    if given or args.bits is not None or args.quant is not None or args.no_error_feedback:
        raise ConfigError("--resume continues a run with its saved config; drop the other run flags "
                          "(only --rounds may be given, to extend the run)")
    cfg = RunConfig.from_mapping(json.loads(saved.read_text()))
    cfg.resume, cfg.out = True, str(folder)
    if args.rounds is not None:
        cfg.rounds = args.rounds
    cfg = cfg.resolved()
    require_rounds_left(folder, latest_round(folder), cfg.rounds)
    return cfg


def summary_text(s: dict, out: str) -> str:
    acc = s.get("final_accuracy")
    acc_txt = "n/a" if acc is None else f"{100 * acc:.1f}%"
    return "\n".join([
        f"done: {s['status']} in {s['seconds']:.0f} s",
        f"  held-out accuracy {acc_txt} (best {100 * (s.get('best_accuracy') or 0):.1f}%, "
        f"before training {100 * (s.get('initial_accuracy') or 0):.1f}%) vs majority-class baseline "
        f"{100 * s['majority_baseline']:.1f}%  [{s['eval_note']}]",
        f"  trainable params {s['trainable_params']:,}; uplink {s['bytes_up'] / MB:.3f} MB "
        f"({s['mb_up_per_client_round']:.4f} MB per client-round, {s['codec']}), downlink {s['bytes_down'] / MB:.3f} MB",
        f"  results: {out}/ (metrics.jsonl, summary.json, ledger.csv, adapter/, accuracy_and_mb.png)",
    ])


def cmd_compare(args: argparse.Namespace) -> int:
    from fedkron.sim.compare import parse_runs, run_compare
    from fedkron.sim.progress import format_round

    specs = parse_runs(args.runs)
    base = config_from_args(args)
    out = args.out or f"results/compare-{base.task}"
    print(f"fedkron compare: {', '.join(s.label for s in specs)} on {base.task} ({base.model}) → {out}", flush=True)
    report = run_compare(base, specs, out, lora_rank=args.lora_rank, resume=args.resume,
                         progress=lambda label, row: print(f"[{label}] {format_round(row)}", flush=True))
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedkron", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_sim = sub.add_parser("sim", help="run one simulated federation (Ray)")
    _add_run_flags(p_sim)
    p_sim.add_argument("--resume", metavar="DIR", help="continue the run in results folder DIR from its last completed round")
    p_sim.set_defaults(func=cmd_sim)
    p_cmp = sub.add_parser("compare", help="several methods/codecs on one task, seed and client schedule")
    p_cmp.add_argument("--runs", default="kron-lora:nf4,lora:fp32",
                       help="comma-separated method:codec list (default kron-lora:nf4,lora:fp32), e.g. "
                            "kron-lora:nf4,kron-lora:int8,kron-lora:fp32,lora:fp32,lora:nf4,krona:nf4")
    p_cmp.add_argument("--lora-rank", type=int, help="rank of the lora runs (default: --rank)")
    p_cmp.add_argument("--resume", action="store_true",
                       help="continue the compare in --out: keep runs finished there with the same "
                            "settings, continue a run cut off mid-way from its last checkpoint")
    _add_run_flags(p_cmp)
    p_cmp.set_defaults(func=cmd_compare)
    sub.add_parser("deploy", help="TLS certificates, node keys and SuperLink/SuperNode commands "
                                  "(fedkron deploy --help; see docs/deployment.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["deploy"]:  # its own parser: certificates, keys, SuperLink/SuperNode commands
        from fedkron.deploy import deploy_main

        return deploy_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        parser.exit(2, f"fedkron: {err}\n")
    except KeyboardInterrupt:
        print("interrupted: partial results are in the results folder", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
