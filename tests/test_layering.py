"""The package reads as the data flow: lower layers never import higher ones."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedkron"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedkron"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fedkron"))
    return found


@pytest.mark.parametrize(
    "layer, forbidden",
    [
        ("client", ("fedkron.strategies", "fedkron.server", "fedkron.sim")),  # a ClientApp ships without the server
        ("protocol.py", ("fedkron.strategies", "fedkron.server", "fedkron.sim", "fedkron.client")),
        ("compression", ("fedkron.protocol", "fedkron.strategies", "fedkron.server", "fedkron.sim", "fedkron.client")),
        (
            "adapters",
            ("fedkron.compression", "fedkron.protocol", "fedkron.strategies", "fedkron.server", "fedkron.sim"),
        ),
        ("strategies", ("fedkron.server", "fedkron.sim")),
        ("server", ("fedkron.sim",)),  # sim builds on server, never the other way round
        ("devices", ("fedkron.strategies", "fedkron.server", "fedkron.sim")),
    ],
)
def test_no_layer_imports_a_later_one(layer, forbidden):
    root = PACKAGE / layer
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    bad = {f"{f.relative_to(PACKAGE)}: {m}" for f in files for m in _imports(f) if m.startswith(forbidden)}
    assert not bad, sorted(bad)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """Every fedkron module this file imports when it runs, function-local imports included (they
    hide cycles), ``if TYPE_CHECKING:`` blocks left out (never executed)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in node.body
        for n in ast.walk(child)
    }
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:  # `from pkg import module` imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (a list of modules, first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_the_package_has_no_import_cycle():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _runtime_imports(path, set(files)) - {name} for name, path in files.items()}
    assert _cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_importing_the_package_leaves_logging_and_warnings_alone():
    """A library must not change its host's logging or warning filters; the entry points do."""
    probe = (
        "import logging, warnings\n"
        "import fedkron, fedkron.cli, fedkron.server.federation, fedkron.runconfig, fedkron.training.local\n"
        "def ours():\n"
        "    return (any('script_method' in str(f[1]) for f in warnings.filters), logging.getLogger('flwr').filters[:],"
        " logging.getLogger('bitsandbytes.backends.cpu.ops').level)\n"
        "print(ours() == (False, [], logging.NOTSET))\n"
        "from fedkron.logs import quiet_third_party\n"
        "quiet_third_party()\n"
        "print(ours()[0] and len(ours()[1]) == 1 and ours()[2] == logging.ERROR)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FEDKRON_VERBOSE", "PYTHONWARNINGS")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr


def _run_showing_notices(args: list[str], verbose_env: str = "") -> subprocess.CompletedProcess:
    """``python -W always::DeprecationWarning ARGS`` with ``$FEDKRON_VERBOSE`` as given: torch's
    ``script_method`` notice, raised on every machine while the imports load, reaches its stderr
    unless fedkron quieted it."""
    env = {k: v for k, v in os.environ.items() if k not in ("FEDKRON_VERBOSE", "PYTHONWARNINGS")}
    cmd = [sys.executable, "-W", "always::DeprecationWarning", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**env, "FEDKRON_VERBOSE": verbose_env}, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("entry", ["fedkron.client.client_app", "fedkron.server.server_app"])
def test_an_app_module_hides_import_time_notices_unless_verbose(entry):
    """Every Ray actor imports the ClientApp module: a notice raised while it imports bitsandbytes
    and torch's compiler would be printed once per actor. It is quieted before those imports; with
    ``FEDKRON_VERBOSE`` it shows (so this test sees the notice it hides)."""
    seen = ["script_method" in _run_showing_notices(["-c", f"import {entry}"], v).stderr for v in ("", "1")]
    assert seen == [False, True]


def test_the_command_hides_import_time_notices_unless_verbose():
    """``fedkron …`` (``python -m fedkron``) quiets the notices its imports raise (bitsandbytes'
    CPU-kernel message used to open every command's output) before importing the CLI; ``--verbose``
    shows them (this test sees torch's ``script_method`` notice, raised on every machine)."""
    seen = []
    for extra in ([], ["--verbose"]):
        done = _run_showing_notices(["-m", "fedkron", "sim", "--help", *extra])
        assert done.stdout.startswith("usage: fedkron sim")
        seen.append("script_method" in done.stderr)
    assert seen == [False, True]
