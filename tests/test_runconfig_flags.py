"""Scripts outside the `fedkron` command (the benchmarks) take run flags from RunConfig's fields."""

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedkron.runconfig.fields import RunConfig
from fedkron.runconfig.flags import add_run_flags, run_settings

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _parser(names, defaults=None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_run_flags(p, names, defaults)
    return p


def test_flags_carry_the_fields_help_type_choices_and_default():
    names = ("local_steps", "partition", "dirichlet_alpha", "error_feedback", "model")
    p = _parser(names)
    actions = {a.dest: a for a in p._actions}
    assert actions["local_steps"].type is int and actions["dirichlet_alpha"].type is float
    assert actions["partition"].choices == FIELDS["partition"].metadata["choices"]
    assert FIELDS["model"].metadata["help"] in actions["model"].help
    assert "the task's" in actions["local_steps"].help  # 0 means the task's default
    args = p.parse_args(["--local-steps", "7", "--no-error-feedback"])
    assert run_settings(args, names) == {
        "local_steps": 7,
        "partition": "iid",
        "dirichlet_alpha": 0.5,
        "error_feedback": False,
        "model": "minilm-l6",
    }
    RunConfig(**run_settings(args, names))  # the values build a run config as they are


def test_a_benchmark_default_is_explicit_and_shown():
    p = _parser(("clients", "local_steps"), defaults={"clients": 20})
    assert p.parse_args([]).clients == 20
    assert "(default: 20)" in next(a.help for a in p._actions if a.dest == "clients")
    with pytest.raises(SystemExit):
        p.parse_args(["--clients", "x"])


def test_unknown_names_and_stray_defaults_are_refused():
    with pytest.raises(ValueError, match="not RunConfig fields: local_step"):
        _parser(("local_step",))
    with pytest.raises(ValueError, match="defaults for flags not added: rounds"):
        _parser(("clients",), defaults={"rounds": 3})


BENCHMARKS = sorted((ROOT / "benchmarks").glob("bench_*.py"))
# One process runs every script's --help as `python benchmarks/bench_X.py --help` would: the script's
# folder first on sys.path (what Python does for a script), nothing else added.
HELP_ALL = """
import runpy, sys
failed = []
for script in sys.argv[1:]:
    sys.argv, sys.path[0] = [script, "--help"], script.rsplit("/", 1)[0]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if stop.code:
            failed.append(script)
    except Exception as e:
        failed.append(f"{script}: {e!r}")
sys.exit("failed: " + ", ".join(failed) if failed else 0)
"""


@pytest.mark.slow
def test_every_benchmark_help_runs_without_path_setup(tmp_path):
    """`python benchmarks/bench_X.py --help` works from any folder, and no script edits sys.path."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    env.pop("PYTHONPATH", None)
    out = subprocess.run(
        [sys.executable, "-c", HELP_ALL, *map(str, BENCHMARKS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    editing = [p.name for p in BENCHMARKS if "sys.path" in p.read_text()]
    assert editing == []
