"""The documentation stays true to the code: the generated pages are current, every relative link
resolves (file and heading), and the README stays a short page for users."""

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
README_MAX_LINES = 250


def _sync_docs():
    """scripts/sync_docs.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sync_docs", ROOT / "scripts" / "sync_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_docs_are_current():
    """docs/cli.md and pyproject's [tool.flwr.app.config] are what the RunConfig fields make now
    (fix: python scripts/sync_docs.py)."""
    assert _sync_docs().stale() == []


def test_check_exits_1_on_a_stale_file(tmp_path):
    """``sync_docs.py --check`` fails on a stale copy and writes nothing; without --check it mends it."""
    sync = _sync_docs()
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "docs" / "cli.md").write_text("# Command reference\n\nold\n")
    assert sync.main(["--check", "--root", str(tmp_path)]) == 1
    assert (tmp_path / "docs" / "cli.md").read_text().endswith("old\n")
    assert sync.main(["--root", str(tmp_path)]) == 0
    assert sync.main(["--check", "--root", str(tmp_path)]) == 0


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces → hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """Every relative link of the README, docs/ and benchmarks/README.md names a file that exists,
    and a heading of it when it has an #anchor."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, broken


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}: details go to docs/)"


def test_docs_hold_no_superseded_archive():
    """Superseded figures are dropped, not archived beside the current ones."""
    assert not (ROOT / "docs" / "earlier-measurements.md").exists()
    assert all("earlier-measurements" not in p.read_text() for p in PAGES)
