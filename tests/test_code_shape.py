"""The code stays the shape a maintainer can read: short functions, function-local imports only
where they avoid a heavy start-up import (saying so), and no generated or large files in git."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedkron"
MAX_FUNCTION_LINES = 60


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_longer_than_60_lines():
    long = [
        f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        for fn in _functions(path)
        if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_every_function_local_import_says_why():
    """A function-local import hides a dependency (and once hid import cycles): each one names its
    reason in a comment on its line or the line above."""
    silent = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for fn in _functions(path):
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                span = lines[node.lineno - 2 : node.end_lineno]  # the line above and the statement
                if not any("#" in line for line in span):
                    silent.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert silent == []


def _check_tree():
    spec = importlib.util.spec_from_file_location("check_tree", ROOT / "scripts" / "check_tree.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tree_check_refuses_binaries_and_large_files(tmp_path, monkeypatch):
    check = _check_tree()
    monkeypatch.setattr(check, "ROOT", tmp_path)
    (tmp_path / "fedkron/data/packaged").mkdir(parents=True)
    (tmp_path / "big.txt").write_bytes(b"x" * (check.LIMIT + 1))
    (tmp_path / "fedkron/data/packaged/big.tsv.xz").write_bytes(b"x" * (check.LIMIT + 1))
    (tmp_path / "small.txt").write_bytes(b"x")
    (tmp_path / "tool.whl").write_bytes(b"x")
    found = check.problems(["big.txt", "fedkron/data/packaged/big.tsv.xz", "small.txt", "tool.whl"])
    assert [line.split(":")[0] for line in found] == ["big.txt", "tool.whl"]


def test_git_tracks_no_binary_and_no_large_file():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert _check_tree().main() == 0
