"""`flwr run .`: the project is a Flower app (pyproject's components and app config), run by Flower's
own CLI on a local simulation SuperLink, writing the same results folder as `fedkron sim`."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("flwr") is None, reason="Flower CLI not on PATH")]


def _ours(home: Path) -> list[psutil.Process]:
    """Processes started with this test's FLWR_HOME (the SuperLink `flwr run` leaves running)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("FLWR_HOME") == str(home):
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def test_flwr_run_dot_runs_the_app_and_writes_the_results_folder(tmp_path):
    home, out = tmp_path / "flwr-home", tmp_path / "results"
    env = dict(
        os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1"
    )
    run_config = (
        f"model='tiny-bert' task='sst2' clients=2 rounds=1 local-steps=2 batch-size=4 max-length=16 "
        f"eval-samples=16 out='{out}'"
    )
    try:
        proc = subprocess.run(
            ["flwr", "run", ".", "--stream", "--federation-config", "num-supernodes=2", "--run-config", run_config],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
        summary_file = out / "summary.json"
        deadline = time.time() + 120
        while not summary_file.is_file() and time.time() < deadline:  # --stream may return before the end
            time.sleep(2)
        assert summary_file.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
        summary = json.loads(summary_file.read_text())
        assert summary["status"] == "completed" and summary["rounds_completed"] == 1
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [0, 1] and rows[1]["accepted"] == 2
        assert json.loads((out / "config.json").read_text())["model"] == "tiny-bert"
    finally:
        procs = _ours(home)
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        for p in alive:
            p.kill()
