"""argparse flags made from RunConfig's fields, for scripts outside the ``fedkron`` command (the
benchmarks).

A run setting a benchmark exposes (``--local-steps``, ``--clients``, ``--model``, ...) is declared
here once, from the field's help, type and choices, so a benchmark cannot drift from the package by
redeclaring it with its own help or type. A benchmark that needs another default passes it
explicitly (``defaults=``), where a reader sees it and its reason.

    parser = argparse.ArgumentParser()
    add_run_flags(parser, ("clients", "rounds", "local_steps"), defaults={"clients": 20})
    cfg = RunConfig(**run_settings(parser.parse_args(), ("clients", "rounds", "local_steps")))
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from fedkron.runconfig.choices import PER_METHOD_FIELDS as _PER_METHOD
from fedkron.runconfig.choices import PER_TASK_FIELDS as _PER_TASK
from fedkron.runconfig.choices import flag
from fedkron.runconfig.fields import RunConfig

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
GROUP = "run settings (RunConfig fields, as in `fedkron sim --help`)"


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RunConfig)}


def _shown_default(f: dataclasses.Field, default: Any) -> str:
    """How the default reads in ``--help``: the field's meaning when it is kept, else the value."""
    if default == f.default and f.name in _PER_TASK:
        return "the task's"
    if default == f.default and f.name in _PER_METHOD:
        return "the method's"
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default) if default != "" else "none"


def add_run_flags(
    parser: argparse.ArgumentParser, names: Iterable[str], defaults: Mapping[str, Any] | None = None
) -> None:
    """Add one flag per RunConfig field in ``names`` (``local_steps`` → ``--local-steps``).

    Help, type and choices are the field's; the default is the field's unless ``defaults`` gives
    the benchmark's own (a name missing from ``names`` or from RunConfig is an error, so a typo
    cannot silently keep the package default).
    """
    names = tuple(names)
    defaults = dict(defaults or {})
    fields = _fields()
    unknown = sorted({*names, *defaults} - set(fields))
    if unknown:
        raise ValueError(f"not RunConfig fields: {', '.join(unknown)}")
    stray = sorted(set(defaults) - set(names))
    if stray:
        raise ValueError(f"defaults for flags not added: {', '.join(stray)}")
    group = parser.add_argument_group(GROUP)
    for name in names:
        f = fields[name]
        default = defaults.get(name, f.default)
        choices = tuple(c for c in (f.metadata.get("choices") or ()) if c != "")
        kind = _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
        text = f.metadata["help"] + (f"; one of {', '.join(choices)}" if choices else "")
        text = f"{text} (default: {_shown_default(f, default)})".replace("%", "%%")
        if kind is bool:
            group.add_argument("--" + flag(name), action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            group.add_argument(
                "--" + flag(name),
                type=kind,
                default=default,
                choices=choices or None,
                help=text,
                metavar=flag(name).split("-")[-1].upper(),
            )


def run_settings(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The parsed values of the flags ``add_run_flags`` added, keyed by RunConfig field."""
    return {name: getattr(args, name) for name in names}
