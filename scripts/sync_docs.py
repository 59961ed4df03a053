"""Rewrite what is made from the RunConfig fields: the README's flag table and pyproject's
[tool.flwr.app.config]. Tests check both are current (tests/test_config_cli.py).

    python scripts/sync_docs.py
"""

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedkron.cli import flag_table  # noqa: E402
from fedkron.runconfig.fields import RunConfig  # noqa: E402

HEADER = """[tool.flwr.app.config]
# Every key is a fedkron RunConfig field ("-" for "_"), at its default (made by scripts/sync_docs.py):
# `fedkron sim --help` and the README explain each. 0 (eval-samples: -1) means "the task's default".
# `clients` is how many SuperNodes the server waits for (match num-supernodes)."""


def app_config() -> str:
    lines, group = [HEADER], None
    for f in dataclasses.fields(RunConfig):
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            lines.append(f"# {group[0].upper()}{group[1:]}")
        v = f.default
        value = ("true" if v else "false") if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else repr(v)
        lines.append(f"{f.name.replace('_', '-')} = {value}")
    return "\n".join(lines) + "\n"


def main() -> None:
    pyproject = ROOT / "pyproject.toml"
    text = pyproject.read_text()
    start = text.index("[tool.flwr.app.config]")
    end = text.find("\n[", start + 1)
    pyproject.write_text(text[:start] + app_config() + ("" if end < 0 else text[end + 1 :]))
    readme = ROOT / "README.md"
    text = readme.read_text()
    start = text.index("| flag | meaning | default |")
    end = text.index("\n\n", start)
    readme.write_text(text[:start] + flag_table() + text[end:])


if __name__ == "__main__":
    main()
