"""Ray's lifecycle around a real `fedkron sim` process: an unreachable cluster is one line before
anything is written, SIGTERM ends a run as "interrupted" (resumable), and no Ray process outlives
a simulation killed with SIGKILL."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sim_process import start_sim

from fedkron.sim.reaper import _alive, _table, ray_processes_below

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--model", "tiny-bert", "--task", "sst2", "--clients", "2", "--local-steps", "2"]
FLAGS += ["--batch-size", "8", "--max-length", "32", "--eval-samples", "32"]


def _ray_below_until_round_1(proc: subprocess.Popen, out: Path, limit: float = 300) -> dict[int, int]:
    """Every Ray process seen below ``proc`` (pid → start time) until round 1 is checkpointed and
    round 2 has begun."""
    seen, pointer, deadline = {}, out / "checkpoint" / "latest.json", time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        seen.update(ray_processes_below(proc.pid, _table()))
        if pointer.is_file():
            time.sleep(1.0)  # inside round 2
            seen.update(ray_processes_below(proc.pid, _table()))
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before round 2: " + proc.communicate()[0][-2000:]
    assert seen, "no Ray process was ever seen below the simulation"
    return seen


def _wait_gone(seen: dict[int, int], limit: float) -> dict[int, int]:
    deadline = time.time() + limit
    while _alive(seen) and time.time() < deadline:
        time.sleep(0.5)
    return _alive(seen)


def test_an_unreachable_ray_address_is_one_line_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    t0 = time.monotonic()
    proc = start_sim(FLAGS + ["--rounds", "1", "--ray-address", "127.0.0.1:1", "--out", str(out)])
    text, _ = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 2, text
    assert "--ray-address 127.0.0.1:1: no Ray cluster answers there" in text
    assert "Traceback" not in text and "round   0" not in text
    assert not out.exists()  # nothing scored, nothing written


def test_sigkill_leaves_no_ray_process_behind(tmp_path):
    out = tmp_path / "run"
    proc = start_sim(FLAGS + ["--rounds", "3", "--out", str(out)])
    seen = _ray_below_until_round_1(proc, out)
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone, not its process group
    proc.communicate()
    survivors = _wait_gone(seen, limit=20)
    for pid in survivors:  # clean up before failing: these were started by this test
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"Ray processes outlived the killed simulation: {sorted(survivors)}"


def test_sigterm_ends_the_run_as_interrupted_and_resume_finishes_it(tmp_path):
    out = tmp_path / "run"
    proc = start_sim(FLAGS + ["--rounds", "3", "--out", str(out)])
    seen = _ray_below_until_round_1(proc, out)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "interrupted by SIGTERM" in text and "stopped: interrupted" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] >= 1
    assert not _wait_gone(seen, limit=10)

    resumed = start_sim(["--resume", str(out)])
    text, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, text[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
