"""``--init-adapter``: start a run from a stored global adapter instead of the seeded init.

The source is a results folder (its final ``adapter/``), an adapter folder, or the
``adapter_model.safetensors`` file in one. Everything that would make the stored factors mean
something else in this run is refused before any work, naming what differs: the model, the method,
rank, alpha, targets and shape policy (from the source run's ``config.json`` and the adapter's own
config), and the factors' names and shapes (from the safetensors header, against the model built
on the meta device).

Heads. A decoder LM scores answers with its LM head: nothing task-specific, every factor carries
over. An encoder's task head (the ``full`` role: classifier, pooler, a dual head's temperature) is
carried over only when the source run's task has the same label set (same label names in the same
order, e.g. sst2 → sentiment, both negative/positive; multiple choice: the same ``--mc-head``);
otherwise it starts from this run's seeded init (new labels, new head), as it does when the source
run's config is not known. The adapter factors always carry over.

``exact`` aggregation keeps the non-output factors at the seeded init every client rebuilds from
``--seed`` (they never travel). So it takes an init adapter only from an ``exact`` run with the
same seed, model and adapter, whose frozen factors are exactly that init; anything else is refused
up front, and the frozen factors' fingerprint is compared again when the adapter is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedkron.adapters import adapter_factor_roles, adapter_state_dict
from fedkron.adapters.model import FULL_ROLE
from fedkron.adapters.storage import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_values,
    read_adapter_meta,
    shape_differences,
    weights_header,
)
from fedkron.data.client_data import task_spec
from fedkron.protocol import frozen_digest, sent_names
from fedkron.runconfig.fields import ConfigError, RunConfig

# Run-config keys that must match between the source run and this one (hyphenated, as saved).
ADAPTER_KEYS = ("model", "method", "rank", "alpha", "targets", "shape-policy")


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder ``--init-adapter`` names: ``DIR/adapter`` of a results folder, the folder
    itself, or the folder of a given ``adapter_model.safetensors``."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.parent
    if (p / "adapter" / CONFIG_NAME).is_file() or (p / "config.json").is_file():
        return p / "adapter"
    return p


def source_record(path: str | Path) -> dict | None:
    """The run config of the run that wrote the adapter (its results folder's ``config.json``), or
    None when the adapter is not inside a results folder."""
    folder = adapter_folder(path)
    for candidate in (folder.parent / "config.json", folder / "config.json"):
        if candidate.is_file():
            try:
                record = json.loads(candidate.read_text())
            except (OSError, ValueError):
                return None
            return RunConfig.from_mapping(record).to_record() if isinstance(record, dict) else None
    return None


def init_adapter_problems(cfg: RunConfig) -> list[str]:
    """Why ``cfg.init_adapter`` cannot start this run (empty when it can), without building a model;
    the names and shapes are :func:`shape_problems`' (on the meta-device model)."""
    if not cfg.init_adapter:
        return []
    where, folder = f"--init-adapter {cfg.init_adapter}", adapter_folder(cfg.init_adapter)
    if not (folder / CONFIG_NAME).is_file():
        hint = " (adapter/ is written when a run completes)" if (folder.parent / "config.json").is_file() else ""
        return [f"{where}: no stored adapter there{hint}; give a results folder, an adapter folder or its file"]
    try:
        meta = read_adapter_meta(folder)
        weights_header(folder / WEIGHTS_NAME, ConfigError)
    except (ValueError, OSError) as err:
        return [f"{where}: {str(err).splitlines()[0]}"]
    mine, theirs = cfg.to_record(), source_record(cfg.init_adapter)
    differ = {k: meta["config"].get(k) for k in ("method", "rank") if meta["config"].get(k) != mine[k]}
    for key in ADAPTER_KEYS if theirs is not None else ():
        if theirs[key] != mine[key]:
            differ.setdefault(key, theirs[key])
    if differ:
        what = ", ".join(f"{k} {v!r} (this run {mine[k]!r})" for k, v in differ.items())
        return [f"{where}: the stored adapter differs from this run: {what}"]
    return exact_problems(cfg, theirs, where)


def exact_problems(cfg: RunConfig, theirs: dict | None, where: str) -> list[str]:
    """``exact`` needs the stored frozen factors to be this run's seeded init (see the module doc)."""
    if cfg.aggregation != "exact":
        return []
    if theirs is None or theirs["aggregation"] != "exact" or theirs["seed"] != cfg.seed:
        what = (
            "its run config is unknown"
            if theirs is None
            else f"it comes from a run with aggregation {theirs['aggregation']!r}, seed {theirs['seed']}"
        )
        return [
            f"{where}: --aggregation exact keeps the non-output factors at the seeded init of --seed {cfg.seed}, "
            f"but {what}: its frozen factors may differ; use --aggregation per-factor, or an adapter from an "
            f"exact run with seed {cfg.seed}"
        ]
    return []


def shape_problems(cfg: RunConfig, model: torch.nn.Module) -> list[str]:
    """The stored factors' names and shapes against ``model`` (built, possibly on the meta device,
    with this run's adapters): every factor must be there with its shape; the head is checked only
    when it is carried over."""
    folder = adapter_folder(cfg.init_adapter)
    try:
        header = weights_header(folder / WEIGHTS_NAME, ConfigError)
    except ConfigError as err:
        return [f"--init-adapter {cfg.init_adapter}: {err}"]
    carried = head_carried(cfg, source_record(cfg.init_adapter))
    shapes = {k: tuple(v.shape) for k, v in adapter_state_dict(model).items()}
    roles = adapter_factor_roles(model)
    wanted = {n: s for n, s in shapes.items() if roles[n] != FULL_ROLE or carried}
    missing, _, differ = shape_differences(wanted, header)
    extra = [n for n in header if n not in shapes]  # a head not carried over may be stored all the same
    wrong = [f"{n} {stored} (this run {mine})" for n, stored, mine in differ]
    found = [
        f"{label} {len(names)} tensors, e.g. {names[:2]}"
        for label, names in (("missing", missing), ("extra", extra))
        if names
    ] + ([f"shapes differ: {', '.join(wrong[:2])}"] if wrong else [])
    if found:
        what = "; ".join(found)
        return [f"--init-adapter {cfg.init_adapter}: the stored adapter does not fit this run's model: {what}"]
    return []


def head_key(cfg: RunConfig) -> tuple:
    """What an encoder's task head means: the label names in id order (or the count), or a
    multiple-choice scorer of the given kind. Equal keys: the head carries over."""
    spec = task_spec(cfg)
    if spec is None:
        return ("instructions",)
    if spec.is_multiple_choice:
        return ("multiple-choice", cfg.mc_head)
    labels = spec.label_names or (spec.custom.label_map if spec.custom else ())
    return ("labels", tuple(labels) or spec.num_labels)


def head_carried(cfg: RunConfig, source: dict | None) -> bool:
    """Whether the stored task head starts this run (see the module doc); a run without the source
    run's config re-initialises it."""
    if source is None:
        return False
    try:
        return head_key(RunConfig.from_mapping(source)) == head_key(cfg)
    except Exception:  # noqa: BLE001 - the source task's files are gone: its labels are unknown
        return False


def initial_state(cfg: RunConfig, model: torch.nn.Module, seeded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The run's starting adapter: the stored factors (and head, when carried over), the rest from
    ``seeded`` (the model's seeded init); in ``exact`` mode the frozen factors' fingerprint must be
    the seeded init's. Every problem is a ConfigError (raised before any round)."""
    problems = init_adapter_problems(cfg) or shape_problems(cfg, model)
    if problems:
        raise ConfigError("cannot start the run: " + "; ".join(problems))
    folder = adapter_folder(cfg.init_adapter)
    stored = load_file(str(folder / WEIGHTS_NAME))
    check_values(stored, str(folder / WEIGHTS_NAME))
    roles = adapter_factor_roles(model)
    carried = head_carried(cfg, source_record(cfg.init_adapter))
    state = {
        name: (stored[name] if roles[name] != FULL_ROLE or carried else value).to(value.dtype).clone()
        for name, value in seeded.items()
    }
    if cfg.aggregation == "exact":
        sent = sent_names(roles, "exact")
        if frozen_digest(state, sent) != frozen_digest(seeded, sent):
            raise ConfigError(
                f"cannot start the run: --init-adapter {cfg.init_adapter}: its frozen factors are not the seeded "
                f"init of --seed {cfg.seed}, which exact aggregation keeps; use --aggregation per-factor"
            )
    return state
