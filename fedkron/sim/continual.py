"""``fedkron continual``: federated stages in sequence, each starting from the last one's adapter,
and a retention matrix of every task after every stage.

Stage k of a run is an ordinary results folder ``OUT/<run>/stage<k>-<task>`` whose config has
``--init-adapter`` = stage k−1's folder (:mod:`fedkron.server.init_adapter` says what carries
over). Once the stages ran, the adapter each stage ended with is scored on every task's held-out
rows (the rows and evaluation of that task's own stage: :func:`fedkron.data.client_data.eval_data`,
:func:`fedkron.training.local.evaluate_metrics`). Encoders have a task head per label set: task j
after stage k is scored with stage k's factors and the head of the latest stage ≤ k whose task
has task j's label set (the head that stage carried over or trained; its own stage's head when no
later task shares its labels; the seeded head before any such stage). Decoder LMs score with the LM
head: stage k's adapter as it is. Cell: accuracy ± its standard error sqrt(p(1−p)/n); forgetting of
task j: the best accuracy after stages j..T−1 minus the accuracy after the last stage T.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.server.results import write_atomically, write_json
from fedkron.sim import simulate  # used as simulate.<name>: a stand-in set by a test is always the one called
from fedkron.sim.compare import LoraSettings, RunSpec, pending_jobs, plan_runs, run_configs

DEFAULT_RUNS = "kron-lora:nf4,lora:fp32"
CACHE = "retention-stage{k}.json"  # a stage's scores on every task, beside the run's stage folders


def stage_folder(k: int, task: str) -> str:
    return f"stage{k}-{task}"


def parse_tasks(text: str) -> list[str]:
    """``"sst2,sentiment"`` → tasks, in order; at least two, none twice, each known (every problem
    named at once)."""
    from fedkron.data import TASKS  # here: fedkron.data imports `datasets` (seconds)

    tasks = [t.strip() for t in (text or "").split(",") if t.strip()]
    problems = [f"--tasks: task {t!r} is not one of {', '.join(sorted(TASKS))}" for t in tasks if t not in TASKS]
    if len(tasks) < 2:
        problems.append("--tasks needs at least two tasks, in the order they are learnt (e.g. sst2,sentiment)")
    if len(set(tasks)) != len(tasks):
        problems.append("--tasks lists a task twice (each task is one column of the retention matrix)")
    if problems:
        raise ConfigError("invalid --tasks:\n  - " + "\n  - ".join(problems))
    return tasks


def stage_configs(
    base: RunConfig,
    tasks: list[str],
    specs: list[RunSpec],
    out: str | Path,
    lora: LoraSettings | None = None,
    downlink: str | None = None,
) -> dict[RunSpec, list[RunConfig]]:
    """Per run, one resolved config per stage: the base config on that stage's task (its per-task
    defaults unless a flag set them), in ``OUT/<run>/stage<k>-<task>``, starting from the stage
    before's folder (stage 1: from ``base.init_adapter``, the seeded init when empty)."""
    plans: dict[RunSpec, list[RunConfig]] = {spec: [] for spec in specs}
    for k, task in enumerate(tasks, 1):
        configs = run_configs(dataclasses.replace(base, task=task), specs, out, lora or LoraSettings(), downlink)
        for spec, cfg in zip(specs, configs):
            folder = Path(out) / spec.folder / stage_folder(k, task)
            start = plans[spec][-1].out if plans[spec] else base.init_adapter
            plans[spec].append(dataclasses.replace(cfg, out=str(folder), init_adapter=start).resolved())
    return plans


def check_stages(plans: dict[RunSpec, list[RunConfig]], resume: bool) -> dict[str, str]:
    """Every problem of every stage before any work (one ConfigError listing them); returns each
    stage folder's plan (``done``, ``resume``, ``restart`` or ``fresh``: :func:`fedkron.sim.compare.plan_runs`).
    Stages after the first start from an adapter that does not exist yet: their model and adapter
    are checked as from the seeded init (the stages share model and adapter settings by construction)."""
    stages = [(k, cfg) for cfgs in plans.values() for k, cfg in enumerate(cfgs)]
    configs = [cfg for _, cfg in stages]

    def checked(i: int, cfg: RunConfig) -> RunConfig:
        return cfg if stages[i][0] == 0 else dataclasses.replace(cfg, init_adapter="")

    return dict(zip((c.out for c in configs), plan_runs(configs, resume, "continual run", checked=checked)))


def run_stages(
    plans: dict[RunSpec, list[RunConfig]],
    todo: dict[str, str],
    progress: Callable[[str, dict], None] | None = None,
    run: Callable[..., dict] | None = None,
    verbose: bool = False,
) -> None:
    """The stages not done yet, in order (stage k of a run after its stage k−1), on Ray (:func:`on_ray`;
    ``run``, for tests: a function called per stage instead)."""
    order = [
        (f"{spec.label} stage {k + 1} {cfg.task}", cfg)
        for k in range(len(next(iter(plans.values()))))
        for spec, cfgs in plans.items()
        for cfg in [cfgs[k]]
    ]
    labels, configs = [label for label, _ in order], [cfg for _, cfg in order]
    jobs, reporters = pending_jobs(labels, configs, [todo[cfg.out] for cfg in configs], progress)
    if run is not None:
        for (_, cfg), report in zip(jobs, reporters):
            run(cfg, progress=report)
    elif jobs:
        on_ray(jobs, reporters, verbose)
    unfinished = [c.out for cfgs in plans.values() for c in cfgs if not (Path(c.out) / "adapter").is_dir()]
    if unfinished:
        raise RuntimeError(f"stages without a final adapter (see their summary.json): {', '.join(unfinished)}")


def on_ray(jobs: list[tuple[str, RunConfig]], reporters: list, verbose: bool) -> None:
    """Run the stages on Ray, one Ray start for each stretch of stages with the same number of
    clients (the simulated SuperNodes hold partitions of that many)."""
    simulate.quiet(verbose)
    t0, start = time.perf_counter(), 0
    while start < len(jobs):
        end = start + 1
        while end < len(jobs) and jobs[end][1].clients == jobs[start][1].clients:
            end += 1
        batch = [simulate.prepared(c, checked=True) for _, c in jobs[start:end]]
        summaries = simulate.run_many(batch, reporters[start:end], verbose=verbose)
        for (label, _), summary in zip(jobs[start:end], summaries):
            print(f"{label}: {summary['status']}", flush=True)
        start = end
    print(f"{len(jobs)} stages in {time.perf_counter() - t0:.0f} s", flush=True)


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` rows."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def forgetting(rows: list[dict[str, float | None]], tasks: list[str]) -> dict[str, float | None]:
    """Per task j (stage j learnt it): the best accuracy after stages j..T−1 minus the accuracy
    after the last stage T; None for the last task (nothing after it to forget with)."""
    out: dict[str, float | None] = {}
    for j, task in enumerate(tasks):
        earlier = [r[task] for r in rows[j:-1] if r[task] is not None]
        final = rows[-1][task]
        out[task] = max(earlier) - final if earlier and final is not None else None
    return out


def head_stage(cfgs: list[RunConfig], k: int, j: int) -> int | None:
    """The stage (0-based) whose stored task head scores task ``j`` after stage ``k``: the latest
    stage ≤ k whose task has task j's label set (None: none yet, the seeded head)."""
    from fedkron.server.init_adapter import head_key  # here: reads the task registry (datasets)

    key = head_key(cfgs[j])
    return next((m for m in range(k, -1, -1) if head_key(cfgs[m]) == key), None)


class Scorer:
    """Scores stored adapters on each task's held-out rows: one model (with that task's head) and
    one evaluation set per task, built once."""

    def __init__(self, cfgs: list[RunConfig]):
        self.cfgs, self._built = cfgs, {}

    def _task(self, j: int):
        from fedkron.adapters import adapter_factor_roles, adapter_state_dict  # here: loads torch (seconds)
        from fedkron.data.client_data import eval_data, model_shape  # here: loads transformers (seconds)
        from fedkron.models import build_model  # here: loads transformers (seconds)

        if j not in self._built:
            cfg = self.cfgs[j]
            model = build_model(cfg, *model_shape(cfg))
            seeded = {k: v.clone() for k, v in adapter_state_dict(model).items()}
            self._built[j] = (model, seeded, adapter_factor_roles(model), eval_data(cfg))
        return self._built[j]

    def cell(self, k: int, j: int) -> dict:
        """Task ``j`` scored with stage ``k``'s factors and the head :func:`head_stage` names."""
        from fedkron.adapters import load_adapter_state_dict  # here: see Scorer._task
        from fedkron.adapters.model import FULL_ROLE  # here: see Scorer._task
        from fedkron.training.local import evaluate_metrics  # here: see Scorer._task

        model, seeded, roles, evalset = self._task(j)
        factors = stored_adapter(self.cfgs[k])
        m = head_stage(self.cfgs, k, j)
        head = stored_adapter(self.cfgs[m]) if m is not None else seeded
        load_adapter_state_dict(model, {n: (head if roles[n] == FULL_ROLE else factors)[n] for n in seeded})
        p, n = evaluate_metrics(model, evalset.data)["accuracy"], evalset.num_rows
        return {
            "accuracy": p,
            "n": n,
            "se": None if p is None else standard_error(p, n),
            "head_stage": None if m is None else m + 1,
        }


def stored_adapter(cfg: RunConfig) -> dict:
    """The final global adapter a stage wrote (``adapter/adapter_model.safetensors``)."""
    from safetensors.torch import load_file  # here: loads torch (seconds)

    from fedkron.adapters.storage import WEIGHTS_NAME  # here: see stored_adapter

    return load_file(str(Path(cfg.out) / "adapter" / WEIGHTS_NAME))


def fingerprint(cfgs: list[RunConfig]) -> list[list[int]]:
    """(size, mtime) of each stage's stored adapter: a cached row is used only for these files."""
    files = [Path(c.out) / "adapter" / "adapter_model.safetensors" for c in cfgs]
    return [[f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def run_matrix(cfgs: list[RunConfig], folder: Path) -> list[dict[str, dict]]:
    """One row per stage: every task's cell after it; a row scored before (``folder``/retention-stage<k>.json,
    same stored adapters) is read back instead of scored again."""
    scorer, rows = Scorer(cfgs), []
    for k in range(len(cfgs)):
        cache, stamp = folder / CACHE.format(k=k + 1), fingerprint(cfgs[: k + 1])
        try:
            saved = json.loads(cache.read_text())
            if saved["adapters"] == stamp:
                rows.append(saved["cells"])
                continue
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not scored yet (or by other adapters): score it
        cells = {cfg.task: scorer.cell(k, j) for j, cfg in enumerate(cfgs)}
        write_json(cache, {"adapters": stamp, "cells": cells})
        rows.append(cells)
    return rows


def retention_report(plans: dict[RunSpec, list[RunConfig]], out: str | Path) -> dict:
    """The retention matrix and forgetting of every run (scored from the stages' stored adapters)."""
    tasks = [c.task for c in next(iter(plans.values()))]
    runs = {}
    for spec, cfgs in plans.items():
        rows = run_matrix(cfgs, Path(out) / spec.folder)
        accuracy = [{t: row[t]["accuracy"] for t in tasks} for row in rows]
        lost = forgetting(accuracy, tasks)
        known = [v for v in lost.values() if v is not None]
        runs[spec.label] = {
            "stages": [
                {"stage": k + 1, "task": cfg.task, "folder": cfg.out, "cells": row}
                for k, (cfg, row) in enumerate(zip(cfgs, rows))
            ],
            "forgetting": lost,
            "mean_forgetting": sum(known) / len(known) if known else None,
        }
    return {"tasks": tasks, "runs": runs, "note": NOTE}


NOTE = (
    "cell: held-out accuracy of the task after the stage ± sqrt(p(1-p)/n); encoders: the stage's factors "
    "with the head of the latest stage so far whose task has the same label set (the seeded head before "
    "any); forgetting: best accuracy after stages j..T-1 minus the accuracy after the last stage T"
)


def _pct(cell: dict) -> str:
    if cell.get("accuracy") is None:
        return "n/a"
    return f"{100 * cell['accuracy']:.1f} ± {100 * cell['se']:.1f}"


def report_markdown(report: dict) -> str:
    """continual.md: one retention matrix per run, then the runs' forgetting side by side."""
    tasks, lines = report["tasks"], ["# Continual federated learning: retention", ""]
    for label, run in report["runs"].items():
        lines += [f"## {label}", "", "| after stage | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for stage in run["stages"]:
            cells = " | ".join(_pct(stage["cells"][t]) for t in tasks)
            lines.append(f"| {stage['stage']} ({stage['task']}) | {cells} |")
        scored = ", ".join(f"{t} {run['stages'][0]['cells'][t]['n']}" for t in tasks)
        lines += ["", f"held-out rows scored: {scored}", ""]
    labels = list(report["runs"])
    lines += ["## Forgetting (percentage points)", "", "| task | " + " | ".join(labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    table = {t: [report["runs"][label]["forgetting"][t] for label in labels] for t in tasks[:-1]}
    table["mean"] = [report["runs"][label]["mean_forgetting"] for label in labels]
    for task, values in table.items():
        lines.append(f"| {task} | " + " | ".join("n/a" if v is None else f"{100 * v:+.1f}" for v in values) + " |")
    return "\n".join(lines + ["", report["note"] + ".", ""])


def run_continual(
    base: RunConfig,
    tasks: list[str],
    specs: list[RunSpec],
    out: str | Path,
    lora: LoraSettings | None = None,
    downlink: str | None = None,
    resume: bool = False,
    progress: Callable[[str, dict], None] | None = None,
    run: Callable[..., dict] | None = None,
    verbose: bool = False,
) -> Path:
    """Check every stage, run those not done (stage by stage; ``resume`` keeps finished ones), score
    the retention matrix and write ``OUT/continual.json`` and ``OUT/continual.md``."""
    plans = stage_configs(base, tasks, specs, out, lora, downlink)
    problems = simulate.ray_address_problems(base.ray_address) if run is None else []
    if problems:
        raise ConfigError("cannot start the continual run:\n  - " + "\n  - ".join(problems))
    todo = check_stages(plans, resume)
    Path(out).mkdir(parents=True, exist_ok=True)
    run_stages(plans, todo, progress, run, verbose)
    report = retention_report(plans, out)
    write_json(Path(out) / "continual.json", report)
    write_atomically(Path(out) / "continual.md", report_markdown(report))
    return Path(out) / "continual.md"
