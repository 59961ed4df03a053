"""Rewrite what is made from the RunConfig fields, so a setting is documented where it is defined:
docs/cli.md (the command reference, from ``fedkron.cli.flag_table()``) and pyproject's
``[tool.flwr.app.config]``. ``--check`` writes nothing and exits 1 when either is stale (CI and
tests/test_docs.py run the same comparison).

    python scripts/sync_docs.py            # rewrite both
    python scripts/sync_docs.py --check    # exit 1, naming each stale file
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from fedkron.cli import build_parser, flag_table
from fedkron.runconfig.fields import RunConfig

ROOT = Path(__file__).resolve().parents[1]

HEADER = """[tool.flwr.app.config]
# Every key is a fedkron RunConfig field ("-" for "_"), at its default (made by scripts/sync_docs.py):
# `fedkron sim --help` and docs/cli.md explain each. 0 (eval-samples: -1) means "the task's default".
# `clients` is how many SuperNodes the server waits for (match num-supernodes)."""

CLI_INTRO = """# Command reference

<!-- Made by scripts/sync_docs.py from fedkron's RunConfig fields; edit the fields, then run it. -->

`fedkron sim`, `fedkron compare`, `fedkron frontier` and `fedkron continual` take one flag per run-config
field (`python -m fedkron sim --help`); the same settings are the keys of
`flwr run . --run-config "..."` (`-` for `_`, see [deployment.md](deployment.md)). "per task" and
"per method" defaults are in [sim.md](sim.md#task-defaults). Unknown values and impossible
combinations stop the run before Ray starts, every problem listed.

## `fedkron sim` (and the run flags of `fedkron compare` and `fedkron frontier`)

"""

DEPLOY = """
## `fedkron deploy`

Certificates, node keys, the SuperLink/SuperNode commands and their flags: `python -m fedkron
deploy --help` and [deployment.md](deployment.md).
"""


def app_config() -> str:
    """pyproject's ``[tool.flwr.app.config]``: every field at its default, grouped as the flags are."""
    lines, group = [HEADER], None
    for f in dataclasses.fields(RunConfig):
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            lines.append(f"# {group[0].upper()}{group[1:]}")
        v = f.default
        value = ("true" if v else "false") if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else repr(v)
        lines.append(f"{f.name.replace('_', '-')} = {value}")
    return "\n".join(lines) + "\n"


def compare_table(command: str = "compare") -> str:
    """The flags only ``fedkron <command>`` (compare, frontier, continual) has, from its parser (the run
    flags are sim's table)."""
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # argparse keeps subparsers nowhere public
    sim_flags = {o for a in sub["sim"]._actions for o in a.option_strings}
    rows = ["| flag | meaning |", "|---|---|"]
    for action in sub[command]._actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        if flags and flags[0] != "--help" and (flags[0] not in sim_flags or flags[0] == "--resume"):
            meaning = (action.help or "").replace("%%", "%").replace("|", "/")
            rows.append(f"| `{flags[0]}` | {meaning} |")
    return "\n".join(rows)


def command_table(name: str) -> str:
    """Every argument of subcommand ``name`` (positional ones first), from its parser."""
    sub = build_parser()._subparsers._group_actions[0].choices
    rows = ["| argument | meaning |", "|---|---|"]
    for action in sub[name]._actions:
        shown = action.option_strings[0] if action.option_strings else action.metavar or action.dest
        if shown != "-h":
            meaning = (action.help or "").replace("%%", "%").replace("|", "/")
            rows.append(f"| `{shown}` | {meaning} |")
    return "\n".join(rows)


def cli_md() -> str:
    """docs/cli.md: the flag table of ``fedkron sim``, the compare-only and frontier-only flags, export
    and evaluate, a pointer for deploy."""
    compare = "\n## `fedkron compare`: its own flags\n\n" + compare_table() + "\n"
    frontier = (
        "\n## `fedkron frontier`: its own flags\n\nIt also takes every run flag above except `--seed` "
        "(see [compare.md](compare.md#frontier)).\n\n" + compare_table("frontier") + "\n"
    )
    export = (
        "\n## `fedkron export` and `fedkron evaluate`\n\nA finished run's adapter as a PEFT or fedkron "
        "folder or a merged model, and its accuracy at each precision: [export.md](export.md).\n\n"
        "`fedkron export RUN_DIR --out DIR`:\n\n" + command_table("export") + "\n\n"
        "`fedkron evaluate RUN_DIR`:\n\n" + command_table("evaluate") + "\n"
    )
    continual = (
        "\n## `fedkron continual`: its own flags\n\nThe run flags are sim's (not `--task`: the stages are "
        "`--tasks`); see [continual.md](continual.md).\n\n" + compare_table("continual") + "\n"
    )
    return CLI_INTRO + flag_table() + "\n" + compare + frontier + continual + export + DEPLOY


def with_app_config(pyproject: str) -> str:
    start = pyproject.index("[tool.flwr.app.config]")
    end = pyproject.find("\n[", start + 1)
    return pyproject[:start] + app_config() + ("" if end < 0 else pyproject[end + 1 :])


def expected(root: Path = ROOT) -> dict[Path, str]:
    """Each generated file's path and the text it should hold now."""
    pyproject = root / "pyproject.toml"
    return {root / "docs" / "cli.md": cli_md(), pyproject: with_app_config(pyproject.read_text())}


def stale(root: Path = ROOT) -> list[str]:
    """The generated files whose text differs from what the fields make (relative paths)."""
    return [
        str(path.relative_to(root))
        for path, text in expected(root).items()
        if not path.is_file() or path.read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a generated file is stale")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)  # tests: a copy of the tree
    args = p.parse_args(argv)
    if args.check:
        names = stale(args.root)
        for name in names:
            print(f"stale: {name} (run python scripts/sync_docs.py)", file=sys.stderr)
        return 1 if names else 0
    for path, text in expected(args.root).items():
        if not path.is_file() or path.read_text() != text:  # leave a current file untouched
            path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
