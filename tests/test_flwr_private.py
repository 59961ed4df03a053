"""Private Flower modules come through one module that refuses untested Flower releases, and the warm
ClientApp script still imports nothing of fedkron."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedkron"
DEPLOY = PACKAGE / "deploy"
MODULE = "fedkron.flwr_private"


def _fresh_import(monkeypatch, version: str):
    import flwr

    monkeypatch.setattr(flwr, "__version__", version)
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return importlib.import_module(MODULE)


@pytest.mark.parametrize("version", ["1.43.0", "1.40.2", "2.0.0", "nightly"])
def test_untested_flower_fails_on_import_naming_both_versions(monkeypatch, version):
    from fedkron.flwr_private import UntestedFlowerError

    monkeypatch.delenv("FEDKRON_ALLOW_UNTESTED_FLWR", raising=False)
    with pytest.raises(ImportError, match=rf"tested with flwr 1\.41\.x only, but flwr {version} is installed") as exc:
        _fresh_import(monkeypatch, version)
    assert type(exc.value).__name__ == UntestedFlowerError.__name__
    assert "FEDKRON_ALLOW_UNTESTED_FLWR=1" in str(exc.value) and "--cold" in str(exc.value)


def test_tested_patch_releases_and_the_override(monkeypatch):
    monkeypatch.delenv("FEDKRON_ALLOW_UNTESTED_FLWR", raising=False)
    assert _fresh_import(monkeypatch, "1.41.7").FLWR_VERSION == "1.41.7"
    monkeypatch.setenv("FEDKRON_ALLOW_UNTESTED_FLWR", "1")
    with pytest.warns(RuntimeWarning, match=r"flwr 1\.42\.0 is installed.*Going on"):
        module = _fresh_import(monkeypatch, "1.42.0")
    assert module.FLWR_VERSION == "1.42.0"


def test_the_package_uses_private_flower_only_in_flwr_private():
    """Every ``flwr`` import anywhere in fedkron outside flwr_private.py is public API."""
    import ast

    public = ("flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.serverapp.strategy", "flwr.simulation")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "flwr_private.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if (name == "flwr" or name.startswith("flwr.")) and name not in public:
                    offenders.append(f"{path.relative_to(PACKAGE)}: {name}")
    assert offenders == []


def _run_script(code: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Import warm_clientapp the way it runs (its folder first on sys.path), away from the repo."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    prelude = f"import sys; sys.path.insert(0, {str(DEPLOY)!r}); "
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env, cwd="/", timeout=120
    )


def test_warm_worker_script_refuses_untested_flower_and_imports_no_fedkron():
    res = _run_script("import flwr; flwr.__version__ = '1.43.1'; import warm_clientapp")
    assert res.returncode != 0
    assert "tested with flwr 1.41.x only, but flwr 1.43.1 is installed" in res.stderr

    res = _run_script(
        "import warm_clientapp; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fedkron')); "
        f"print({str(DEPLOY)!r} in sys.path)"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["[]", "False"]  # no fedkron, and its folder shadows nothing
