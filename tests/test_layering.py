"""The package reads as the data flow: lower layers never import higher ones."""

import ast
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


@pytest.mark.parametrize("layer, forbidden", [
    ("client", ("fedkron.strategies", "fedkron.server", "fedkron.sim")),  # a ClientApp ships without the server
    ("protocol.py", ("fedkron.strategies", "fedkron.server", "fedkron.sim", "fedkron.client")),
    ("compression", ("fedkron.protocol", "fedkron.strategies", "fedkron.server", "fedkron.sim", "fedkron.client")),
    ("adapters", ("fedkron.compression", "fedkron.protocol", "fedkron.strategies", "fedkron.server", "fedkron.sim")),
    ("strategies", ("fedkron.server", "fedkron.sim")),
    ("server", ("fedkron.sim",)),  # sim builds on server, never the other way round
    ("devices", ("fedkron.strategies", "fedkron.server", "fedkron.sim")),
])
def test_no_layer_imports_a_later_one(layer, forbidden):
    root = PACKAGE / layer
    files = [root] if root.is_file() else sorted(root.rglob("*.py"))
    bad = {f"{f.relative_to(PACKAGE)}: {m}" for f in files for m in _imports(f) if m.startswith(forbidden)}
    assert not bad, sorted(bad)
