"""``fedkron compare``: several method/codec runs on one task, partition, seed and client schedule.

Each run is an ordinary :func:`run_sim` into its own folder; the report is then built only from
what those folders hold (ledgers and metrics), so every number in it can be traced to messages.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path

from fedkron.runconfig.fields import AGGREGATIONS, CODECS, METHODS, ConfigError, RunConfig
from fedkron.server.checkpoint import PER_FOLDER, latest_round, saved_config
from fedkron.server.preflight import data_problems, holds_a_run, model_problems, write_problems
from fedkron.sim import simulate  # used as simulate.<name>: a stand-in set by a test is always the one called
from fedkron.sim.report import write_report

DEFAULT_RUNS = "kron-lora:nf4,lora:fp32,flowertune"
# Runs known by a name: the baselines a reader asks for.
PRESETS = {
    # Flower's recipe; its learning rate chosen on the same grid as the others (LoRA on q,v only)
    "flowertune": dict(method="lora", uplink="fp32", targets="query,value", aggregation="per-factor", lr=2e-3),
    "ffa-lora": dict(method="lora", aggregation="exact"),  # LoRA with A frozen at its seeded init (exact)
}
# The recipe's query and value projections as decoder LLMs (Llama, Mistral, Qwen2, SmolLM) name them:
# PEFT's default LoRA targets for those models; "query,value" are BERT's names.
DECODER_QUERY_VALUE = "q_proj,v_proj"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    method: str  # an adapter method or a preset name
    codec: str | None = None  # both ways unless --downlink says otherwise; None: the preset's or fp32
    aggregation: str | None = None  # None: kron-lora takes the base config's, the others per-factor
    rank: int | None = None  # None: --lora-rank for LoRA, the base config's for the others
    targets: str | None = None  # module-name suffixes joined by "+"; None: the preset's or the base's

    def _parts(self) -> tuple[str, ...]:
        rank = f"r{self.rank}" if self.rank else None
        return tuple(filter(None, (self.method, self.codec, self.aggregation, rank, self.targets)))

    @property
    def label(self) -> str:
        return ":".join(self._parts())

    @property
    def folder(self) -> str:
        return "-".join(self._parts())

    def settings(self, base: RunConfig) -> dict:
        """The RunConfig fields this run sets (method, codec, aggregation, rank, targets)."""
        out = dict(PRESETS.get(self.method, {"method": self.method}))
        out.setdefault("uplink", self.codec or "fp32")
        if self.codec:
            out["uplink"] = self.codec
        if self.aggregation:
            out["aggregation"] = self.aggregation
        out.setdefault("aggregation", base.aggregation if out["method"] == "kron-lora" else "per-factor")
        if self.rank:
            out["rank"] = self.rank
        if self.targets:
            out["targets"] = self.targets.replace("+", ",")
        elif self.method == "flowertune":
            from fedkron.models import is_language_model  # here: it imports torch and transformers

            if is_language_model(base.model):
                out["targets"] = DECODER_QUERY_VALUE
        return out


GRAMMAR = "method[:codec][:aggregation][:rN][:targets], targets joined by '+'"
_RANK = re.compile(r"r(\d+)")
_CODEC_LIKE = re.compile(r"(fp|bf|int|uint|nf|q)\d+")  # a misspelt codec, not a module name
_TARGETS = re.compile(r"all-linear|[A-Za-z_][\w.]*(\+[A-Za-z_][\w.]*)*")


def _token_kind(token: str) -> str | None:
    """Which part of a run spec ``token`` is: codec, aggregation, rank or targets (None: none)."""
    if token in CODECS:
        return "codec"
    if token in AGGREGATIONS:  # read at call time: aggregations added to runconfig are known here
        return "aggregation"
    if _RANK.fullmatch(token):
        return "rank"
    if _CODEC_LIKE.fullmatch(token) or not _TARGETS.fullmatch(token):
        return None
    return "targets"


def parse_spec(item: str) -> tuple[RunSpec, list[str]]:
    """One ``method[:codec][:aggregation][:rN][:targets]`` (the parts after the method in any order,
    each recognised by its kind) → the spec and the problems with it."""
    method, *tokens = item.split(":")
    problems, parts = [], {}
    if method not in METHODS and method not in PRESETS:
        problems.append(f"{item!r}: method {method!r} is not one of {', '.join(METHODS + tuple(PRESETS))}")
    for token in tokens:
        kind = _token_kind(token)
        if kind is None and _CODEC_LIKE.fullmatch(token):
            problems.append(f"{item!r}: codec {token!r} is not one of {', '.join(CODECS)}")
        elif kind is None:
            problems.append(
                f"{item!r}: {token!r} is no codec ({', '.join(CODECS)}), aggregation "
                f"({', '.join(AGGREGATIONS)}), rank (r1, r8, …) or targets (e.g. query+value)"
            )
        elif kind in parts:
            problems.append(f"{item!r}: two {kind}s ({parts[kind]!r}, {token!r})")
        else:
            parts[kind] = token
    rank = int(_RANK.fullmatch(parts["rank"]).group(1)) if "rank" in parts else None
    if rank == 0:
        problems.append(f"{item!r}: rank r0 (ranks start at r1; leave it out for the default)")
    spec = RunSpec(method, parts.get("codec"), parts.get("aggregation"), rank or None, parts.get("targets"))
    return spec, problems


def parse_runs(text: str) -> list[RunSpec]:
    """``"kron-lora:nf4:exact,lora:nf4:r8:query+value,flowertune"`` (see :data:`GRAMMAR`; presets:
    flowertune, ffa-lora) → run specs; every problem named at once."""
    specs, problems = [], []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        spec, found = parse_spec(item)
        specs.append(spec)
        problems += found
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
            settings.setdefault("rank", lora.rank)
            settings.update({"lr": lora.lr} if lora.lr else {})
            if lora.targets and "targets" not in settings:
                settings["targets"] = lora.targets
        settings["downlink"] = downlink or settings["uplink"]
        cfg = dataclasses.replace(base, **settings, out=str(Path(out) / spec.folder))
        configs.append(cfg.resolved())
    return configs


def resume_plan(cfg: RunConfig) -> str:
    """What a resumed compare does with the run folder ``cfg.out``: ``"done"`` (finished with these
    settings: keep it), ``"resume"`` (cut off after a checkpoint: go on from there), ``"restart"``
    (the same settings, cut off or failed before its first checkpoint: nothing to keep, start it
    again in place) or ``"fresh"``. A folder holding a run with other settings is refused rather
    than mixed into the report."""

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
    return "resume" if done else "restart"


def job_config(cfg: RunConfig, plan: str) -> RunConfig:
    """The config a planned run starts with: resumed from its checkpoint, or started (again) in its
    folder, replacing what a ``restart`` left there."""
    return dataclasses.replace(cfg, resume=plan == "resume", overwrite=plan in ("fresh", "restart"))


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
    run_all([s.label for s in specs], configs, "comparison", progress, run, resume, verbose)
    if precision_eval:
        evaluate_finished([Path(c.out) for c in configs])
    return write_report(out, [Path(c.out) for c in configs])


def run_all(
    labels: list[str],
    configs: list[RunConfig],
    what: str = "comparison",
    progress: Callable[[str, dict], None] | None = None,
    run: Callable[..., dict] | None = None,
    resume: bool = False,
    verbose: bool = False,
) -> None:
    """Run ``configs`` (named ``labels`` in progress lines) on one Ray start, or through ``run`` (for
    tests: called per run). Every config is checked, and with ``resume`` planned (kept, continued,
    restarted or fresh), before any run starts; a failed run does not stop the others."""
    problems = simulate.ray_address_problems(configs[0].ray_address) if run is None and configs else []
    plans = plan_runs(configs, resume, what, problems)
    todo, reporters = pending_jobs(labels, configs, plans, progress, kept="run ")
    if run is not None:
        for (label, cfg), report in zip(todo, reporters):
            try:
                run(cfg, progress=report)
            except Exception as err:  # one failed run must not lose the others
                print(f"run {label} failed: {type(err).__name__}: {err}")
    elif todo:
        simulate.quiet(verbose)
        t0 = time.perf_counter()
        summaries = simulate.run_many(
            [simulate.prepared(cfg, checked=True) for _, cfg in todo], reporters, verbose=verbose
        )
        for (label, _), summary in zip(todo, summaries):
            print(f"run {label}: {summary['status']}", flush=True)
        print(f"{len(todo)} runs in {time.perf_counter() - t0:.0f} s", flush=True)


def pending_jobs(
    labels: list[str],
    configs: list[RunConfig],
    plans: list[str],
    progress: Callable[[str, dict], None] | None,
    kept: str = "",
) -> tuple[list[tuple[str, RunConfig]], list]:
    """(label, config to start) of every run whose plan is not ``done`` (those are named, after the
    prefix ``kept``, and kept), each folder's parent made, and a progress reporter for each (None
    without ``progress``). Shared by compare, frontier and continual."""
    jobs = []
    for label, cfg, plan in zip(labels, configs, plans):
        if plan == "done":
            print(f"{kept}{label}: finished earlier in {cfg.out}, kept", flush=True)
            continue
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        jobs.append((label, job_config(cfg, plan)))
    return jobs, [(lambda row, label=label: progress(label, row)) if progress else None for label, _ in jobs]


def plan_runs(
    configs: list[RunConfig],
    resume: bool,
    what: str,
    problems: list[str] | None = None,
    checked: Callable[[int, RunConfig], RunConfig] = lambda i, cfg: cfg,
) -> list[str]:
    """Each run folder's plan (``done``, ``resume``, ``restart`` or ``fresh``: :func:`resume_plan`),
    after every refusal of every run (a folder holding another run or that cannot be written, the
    model, the data; added to ``problems``) is raised as one ConfigError, before any run starts.
    ``checked(i, cfg)``: the config whose model and data are checked for run ``i``."""
    problems = list(problems or [])
    plans = [resume_plan(cfg) if resume else "fresh" for cfg in configs]
    for i, (cfg, plan) in enumerate(zip(configs, plans)):
        if plan == "fresh" and holds_a_run(Path(cfg.out)) and not cfg.overwrite:
            problems.append(f"{cfg.out} holds a run; pass --overwrite to replace it, --resume to keep it")
        if plan != "done":
            mine = checked(i, cfg)
            found = write_problems(Path(cfg.out), leave_no_trace=True) + model_problems(mine) + data_problems(mine)
            problems += [p for p in found if p not in problems]
    if problems:
        raise ConfigError(f"cannot start the {what}:\n  - " + "\n  - ".join(problems))
    return plans


def evaluate_finished(folders: list[Path]) -> None:
    """``--precision-eval``: the precision table of every finished run (a run that cannot be scored
    is named and skipped, its other figures kept)."""
    from fedkron.sim.precision import evaluate_precisions  # here: builds models (transformers, seconds)

    for folder in folders:
        try:
            evaluate_precisions(folder)
        except Exception as err:  # one run that cannot be scored must not lose the report
            print(f"run {folder.name}: no precision table ({type(err).__name__}: {err})", flush=True)
