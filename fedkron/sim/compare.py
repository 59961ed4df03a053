"""``fedkron compare``: several method/codec runs on one task, partition, seed and client schedule.

Each run is an ordinary :func:`run_sim` into its own folder; the report is then built only from
what those folders hold (ledgers and metrics), so every number in it can be traced to messages.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from fedkron.runconfig.fields import AGGREGATIONS, CODECS, METHODS, ConfigError, RunConfig
from fedkron.server.checkpoint import PER_FOLDER, latest_round, saved_config
from fedkron.server.preflight import data_problems, holds_a_run, model_problems
from fedkron.sim import simulate  # used as simulate.<name>: a stand-in set by a test is always the one called
from fedkron.sim.report import write_report

DEFAULT_RUNS = "kron-lora:nf4,lora:fp32,flowertune"
# Runs known by a name: the baselines a reader asks for.
PRESETS = {
    # Flower's recipe; its learning rate chosen on the same grid as the others (LoRA on q,v only)
    "flowertune": dict(method="lora", uplink="fp32", targets="query,value", aggregation="per-factor", lr=2e-3),
    "ffa-lora": dict(method="lora", aggregation="exact"),  # LoRA with A frozen at its seeded init (exact)
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    method: str  # an adapter method or a preset name
    codec: str | None = None  # both ways unless --downlink says otherwise; None: the preset's or fp32
    aggregation: str | None = None  # None: kron-lora takes the base config's, the others per-factor

    @property
    def label(self) -> str:
        return ":".join(filter(None, (self.method, self.codec, self.aggregation)))

    @property
    def folder(self) -> str:
        return "-".join(filter(None, (self.method, self.codec, self.aggregation)))

    def settings(self, base: RunConfig) -> dict:
        """The RunConfig fields this run sets (method, codec, aggregation, targets)."""
        out = dict(PRESETS.get(self.method, {"method": self.method}))
        out.setdefault("uplink", self.codec or "fp32")
        if self.codec:
            out["uplink"] = self.codec
        if self.aggregation:
            out["aggregation"] = self.aggregation
        out.setdefault("aggregation", base.aggregation if out["method"] == "kron-lora" else "per-factor")
        return out


def parse_runs(text: str) -> list[RunSpec]:
    """``"kron-lora:nf4:exact,lora:fp32,flowertune"`` (method:codec[:aggregation], or a preset:
    flowertune, ffa-lora[:codec]) → run specs; every problem named at once."""
    specs, problems = [], []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        method, codec, aggregation = (item.split(":") + ["", ""])[:3]
        if method not in METHODS and method not in PRESETS:
            problems.append(f"{item!r}: method {method!r} is not one of {', '.join(METHODS + tuple(PRESETS))}")
        if codec and codec not in CODECS:
            problems.append(f"{item!r}: codec {codec!r} is not one of {', '.join(CODECS)}")
        if aggregation and aggregation not in AGGREGATIONS:
            problems.append(f"{item!r}: aggregation {aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        specs.append(RunSpec(method, codec or None, aggregation or None))
    if not specs:
        problems.append("--runs lists no run (e.g. kron-lora:nf4,lora:fp32)")
    if len({s.folder for s in specs}) != len(specs):
        problems.append("--runs lists a run twice")
    if problems:
        raise ConfigError("invalid --runs:\n  - " + "\n  - ".join(problems))
    return specs


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """How the LoRA baselines run: LoRA-8 by default, at their own learning rate if given."""

    rank: int = 8
    lr: float | None = None
    targets: str | None = None  # None: the base config's (flowertune sets its own)


def run_configs(
    base: RunConfig,
    specs: list[RunSpec],
    out: str | Path,
    lora: LoraSettings = LoraSettings(),
    downlink: str | None = None,
) -> list[RunConfig]:
    """One validated config per run: the base config with the run's method, codecs (the run's codec
    both ways, unless ``downlink`` is given), aggregation, LoRA's rank / lr / targets and folder."""
    configs = []
    for spec in specs:
        settings = spec.settings(base)
        if settings["method"] == "lora":
            settings.update(rank=lora.rank, **({"lr": lora.lr} if lora.lr else {}))
            if lora.targets and "targets" not in settings:
                settings["targets"] = lora.targets
        settings["downlink"] = downlink or settings["uplink"]
        cfg = dataclasses.replace(base, **settings, out=str(Path(out) / spec.folder))
        configs.append(cfg.resolved())
    return configs


def resume_plan(cfg: RunConfig) -> str:
    """What a resumed compare does with the run folder ``cfg.out``: ``"done"`` (finished with these
    settings: keep it), ``"resume"`` (cut off after a checkpoint: go on from there) or ``"fresh"``.
    A folder holding a run with other settings is refused rather than mixed into the report."""

    folder = Path(cfg.out)
    if not (folder / "config.json").is_file():
        return "fresh"
    record, notice = saved_config(folder)
    if notice:
        print(f"run {folder.name}: {notice}", flush=True)
    # from_mapping: a key the saved run predates ran at its default; values coerced as on --resume
    saved = RunConfig.from_mapping(record).to_record()
    mine = cfg.to_record()
    differ = sorted(k for k in mine if k not in PER_FOLDER and saved[k] != mine[k])
    if differ or saved["rounds"] > cfg.rounds:
        what = (
            ", ".join(f"{k} {saved[k]!r} (now {mine[k]!r})" for k in differ)
            or f"rounds {saved['rounds']} (now {cfg.rounds})"
        )
        raise ConfigError(
            f"--resume: {folder} holds a run with other settings: {what}; "
            "use another --out or drop --resume to start it again"
        )
    done = latest_round(folder)
    if done >= cfg.rounds and (folder / "summary.json").is_file():
        return "done"
    return "resume" if done else "fresh"


def run_compare(
    base: RunConfig,
    specs: list[RunSpec],
    out: str | Path,
    lora: LoraSettings = LoraSettings(),
    progress: Callable[[str, dict], None] | None = None,
    run: Callable[..., dict] | None = None,
    resume: bool = False,
    downlink: str | None = None,
    verbose: bool = False,
    precision_eval: bool = False,
) -> Path:
    """Run every spec (all checked first, before any Ray start) and write the report into ``out``.

    The runs share one Ray start (``run``, for tests: a function called per run instead). With
    ``resume``, runs already finished in ``out`` with the same settings are kept and a run cut off
    mid-way continues from its last checkpoint (see :func:`resume_plan`)."""

    configs = run_configs(base, specs, out, lora, downlink)
    plans = [resume_plan(cfg) if resume else "fresh" for cfg in configs]  # every refusal before any run
    problems = simulate.ray_address_problems(base.ray_address) if run is None else []
    for cfg, plan in zip(configs, plans):
        if plan == "fresh" and holds_a_run(Path(cfg.out)) and not cfg.overwrite:
            problems.append(f"{cfg.out} holds a run; pass --overwrite to replace it, --resume to keep it")
        if plan != "done":
            problems += [p for p in model_problems(cfg) + data_problems(cfg) if p not in problems]
    if problems:
        raise ConfigError("cannot start the comparison:\n  - " + "\n  - ".join(problems))
    Path(out).mkdir(parents=True, exist_ok=True)
    todo = []
    for spec, cfg, plan in zip(specs, configs, plans):
        if plan == "done":
            print(f"run {spec.label}: finished earlier in {cfg.out}, kept", flush=True)
            continue
        todo.append((spec, dataclasses.replace(cfg, resume=plan == "resume", overwrite=plan == "fresh")))
    reporters = [(lambda row, label=spec.label: progress(label, row)) if progress else None for spec, _ in todo]
    if run is not None:
        for (spec, cfg), report in zip(todo, reporters):
            try:
                run(cfg, progress=report)
            except Exception as err:  # one failed run must not lose the others
                print(f"run {spec.label} failed: {type(err).__name__}: {err}")
    elif todo:
        simulate.quiet(verbose)
        t0 = time.perf_counter()
        summaries = simulate.run_many(
            [simulate.prepared(cfg, checked=True) for _, cfg in todo], reporters, verbose=verbose
        )
        for (spec, _), summary in zip(todo, summaries):
            print(f"run {spec.label}: {summary['status']}", flush=True)
        print(f"{len(todo)} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    if precision_eval:
        evaluate_finished([Path(c.out) for c in configs])
    return write_report(out, [Path(c.out) for c in configs])


def evaluate_finished(folders: list[Path]) -> None:
    """``--precision-eval``: the precision table of every finished run (a run that cannot be scored
    is named and skipped, its other figures kept)."""
    from fedkron.sim.precision import evaluate_precisions  # here: builds models (transformers, seconds)

    for folder in folders:
        try:
            evaluate_precisions(folder)
        except Exception as err:  # one run that cannot be scored must not lose the report
            print(f"run {folder.name}: no precision table ({type(err).__name__}: {err})", flush=True)
