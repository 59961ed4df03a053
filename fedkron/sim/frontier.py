"""``fedkron frontier``: the bytes–accuracy frontier of several run configs over paired seeds.

Every config runs once per seed; run k of seed s uses seed s, so the configs of one seed share its
partitions, client schedule and scored rows, and a config's accuracy can be compared with the
reference's seed by seed (paired). All runs (configs × seeds) share one Ray start, each into
``OUT/seed<s>/<run folder>``; the report (:mod:`fedkron.sim.frontier_report`) is then built only
from those folders.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.sim.compare import LoraSettings, RunSpec, run_all, run_configs
from fedkron.sim.frontier_report import REFERENCE, is_reference, write_frontier

# Kron-LoRA and LoRA at nf4 over ranks, LoRA-8 on query,value at nf4, the LoRA-8 fp32 reference, FlowerTune
DEFAULT_FRONTIER_RUNS = (
    "kron-lora:nf4:r1,kron-lora:nf4:r2,kron-lora:nf4:r4,lora:nf4:r1,lora:nf4:r2,lora:nf4:r8,"
    "lora:nf4:r8:query+value,lora:fp32:r8,flowertune"
)
DEFAULT_SEEDS = "0-4"
_LORA = LoraSettings()  # LoRA-8 at its default rate
_SEED_ITEM = re.compile(r"(\d+)(?:-(\d+))?")


def parse_seeds(text: str) -> list[int]:
    """``"0-4"``, ``"0,1,2"`` or ``"0-2,7"`` → the seeds, in order, each once."""
    seeds: list[int] = []
    for item in [t.strip() for t in str(text).split(",") if t.strip()]:
        match = _SEED_ITEM.fullmatch(item)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise ConfigError(f"invalid --seeds: {item!r} (e.g. 0-4 or 0,1,2)")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        seeds += [s for s in range(lo, hi + 1) if s not in seeds]
    if not seeds:
        raise ConfigError("invalid --seeds: no seed (e.g. 0-4 or 0,1,2)")
    return seeds


def seed_folder(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed{seed}"


def frontier_configs(
    base: RunConfig,
    specs: list[RunSpec],
    seeds: list[int],
    out: str | Path,
    lora: LoraSettings = _LORA,
    downlink: str | None = None,
) -> list[tuple[int, RunSpec, RunConfig]]:
    """(seed, spec, config) of every run: compare's config of each spec with the seed set, into
    ``OUT/seed<s>/<run folder>``. Configs of one seed differ only in what their spec sets."""
    planned = []
    for seed in seeds:
        configs = run_configs(dataclasses.replace(base, seed=seed), specs, seed_folder(out, seed), lora, downlink)
        planned += [(seed, spec, cfg) for spec, cfg in zip(specs, configs)]
    return planned


def run_frontier(
    base: RunConfig,
    specs: list[RunSpec],
    seeds: list[int],
    out: str | Path,
    lora: LoraSettings = _LORA,
    progress: Callable[[str, dict], None] | None = None,
    run: Callable[..., dict] | None = None,
    resume: bool = False,
    downlink: str | None = None,
    verbose: bool = False,
    target: float | None = None,
) -> Path:
    """Run every config at every seed (all checked first; one Ray start, or ``run`` per run for
    tests), then write the frontier report into ``out``. With ``resume``, runs finished in ``out``
    with the same settings are kept, so configs or seeds can be added to a frontier."""
    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"invalid --target {target}: an accuracy as a fraction, e.g. 0.84")
    planned = frontier_configs(base, specs, seeds, out, lora, downlink)
    if target is None and not any(is_reference(cfg.to_record()) for _, _, cfg in planned):
        raise ConfigError(
            f"the frontier's target is the reference {REFERENCE}'s accuracy − 1 point: "
            "add lora:fp32:r8 to --runs, or give --target"
        )
    labels = [f"seed{seed}/{spec.label}" for seed, spec, _ in planned]
    run_all(labels, [cfg for _, _, cfg in planned], "frontier", progress, run, resume, verbose)
    return write_frontier(out, [Path(cfg.out) for _, _, cfg in planned], target)
