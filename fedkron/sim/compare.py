"""``fedkron compare``: several method/codec runs on one task, partition, seed and client schedule.

Each run is an ordinary :func:`run_sim` into its own folder; the report is then built only from
what those folders hold (ledgers and metrics), so every number in it can be traced to messages.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

from fedkron.config import CODECS, METHODS, ConfigError, RunConfig

DEFAULT_RUNS = "kron-lora:nf4,lora:fp32"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    method: str
    codec: str

    @property
    def label(self) -> str:
        return f"{self.method}:{self.codec}"


def parse_runs(text: str) -> list[RunSpec]:
    """``"kron-lora:nf4,lora:fp32"`` → run specs; every problem named at once."""
    specs, problems = [], []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        method, _, codec = item.partition(":")
        codec = codec or "fp32"
        if method not in METHODS:
            problems.append(f"{item!r}: method {method!r} is not one of {METHODS}")
        if codec not in CODECS:
            problems.append(f"{item!r}: codec {codec!r} is not one of {CODECS}")
        specs.append(RunSpec(method, codec))
    if not specs:
        problems.append("--runs lists no run (e.g. kron-lora:nf4,lora:fp32)")
    if len(set(specs)) != len(specs):
        problems.append("--runs lists a run twice")
    if problems:
        raise ConfigError("invalid --runs:\n  - " + "\n  - ".join(problems))
    return specs


def run_configs(base: RunConfig, specs: list[RunSpec], out: str | Path, lora_rank: int | None = None) -> list[RunConfig]:
    """One validated config per run, identical but for method, codec, rank and folder."""
    configs = []
    for spec in specs:
        rank = lora_rank if (spec.method == "lora" and lora_rank) else base.rank
        cfg = dataclasses.replace(base, method=spec.method, quant=spec.codec, rank=rank,
                                  out=str(Path(out) / f"{spec.method}-{spec.codec}"))
        configs.append(cfg.resolved())
    return configs


def run_compare(
    base: RunConfig,
    specs: list[RunSpec],
    out: str | Path,
    lora_rank: int | None = None,
    progress: Callable[[str, dict], None] | None = None,
    run: Callable[..., dict] | None = None,
) -> Path:
    """Run every spec (validated first, before any Ray start) and write the report into ``out``."""
    from fedkron.sim.report import write_report
    from fedkron.sim.simulate import run_sim

    run = run or run_sim
    configs = run_configs(base, specs, out, lora_rank)
    Path(out).mkdir(parents=True, exist_ok=True)
    for spec, cfg in zip(specs, configs):
        t0 = time.perf_counter()
        cb = (lambda row, label=spec.label: progress(label, row)) if progress else None
        try:
            run(cfg, progress=cb)
        except Exception as err:  # one failed run must not lose the others
            print(f"run {spec.label} failed: {type(err).__name__}: {err}")
        else:
            print(f"run {spec.label} finished in {time.perf_counter() - t0:.0f} s")
    return write_report(out, [Path(c.out) for c in configs])
