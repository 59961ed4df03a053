"""Kill a real `fedkron sim` process with SIGKILL mid-run, resume it, and compare with a clean run."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sim_process import start_sim

from fedkron.server.ledger import Ledger

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "--model",
    "tiny-bert",
    "--task",
    "sst2",
    "--clients",
    "3",
    "--rounds",
    "3",
    "--local-steps",
    "3",
    "--batch-size",
    "8",
    "--max-length",
    "32",
    "--eval-samples",
    "32",
    "--lr",
    "0.005",
    "--bits",
    "4",
]


def _finish(proc, limit=400):
    out, _ = proc.communicate(timeout=limit)
    assert proc.returncode == 0, out[-3000:]
    return out


def _train_totals(folder: Path, figure: str) -> tuple[int, int, int]:
    rows = [r for r in Ledger.read_csv(folder / "ledger.csv").rows if r.kind == "train"]
    return (
        sum(getattr(r, figure) for r in rows if r.direction == "up"),
        sum(getattr(r, figure) for r in rows if r.direction == "down"),
        len(rows),
    )


def test_sigkill_mid_round_then_resume_matches_an_uninterrupted_run(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    victim = start_sim(FLAGS + ["--out", str(killed)])
    reference = start_sim(FLAGS + ["--out", str(clean)])
    # Kill the victim (and its Ray processes) once round 1 is checkpointed and round 2 has started.
    pointer = killed / "checkpoint" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if pointer.is_file() and json.loads(pointer.read_text())["round"] == 1:
            time.sleep(1.0)  # inside round 2
            break
        time.sleep(0.2)
    assert victim.poll() is None, "the run ended before it could be killed: " + victim.communicate()[0][-2000:]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert json.loads(pointer.read_text())["round"] in (1, 2)
    assert not (killed / "adapter").exists()  # it really died before finishing

    out = _finish(start_sim(["--resume", str(killed)]))
    assert "completed" in out
    _finish(reference)

    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from_round"] in (1, 2)

    a = load_file(str(clean / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(killed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    for figure in ("payload", "count_bytes"):
        assert _train_totals(clean, figure) == _train_totals(killed, figure)
    # Serialized sizes carry random 64-bit node ids as varints: equal up to a few bytes a message.
    up_a, down_a, n = _train_totals(clean, "serialized")
    up_b, down_b, _ = _train_totals(killed, "serialized")
    assert abs(up_a - up_b) <= 4 * n and abs(down_a - down_b) <= 4 * n

    # Extend the finished run by one round: rounds 1-3 are kept as they were, round 4 is added.
    before = (clean / "metrics.jsonl").read_text().splitlines()
    out = _finish(start_sim(["--resume", str(clean), "--rounds", "4"]))
    assert "completed" in out
    after = (clean / "metrics.jsonl").read_text().splitlines()
    assert after[:4] == before  # the earlier rounds' rows, untouched
    after = [json.loads(line) for line in after]
    assert [r["round"] for r in after] == [0, 1, 2, 3, 4]
    summary = json.loads((clean / "summary.json").read_text())
    assert (summary["rounds"], summary["rounds_completed"], summary["resumed_from_round"]) == (4, 4, 3)
    assert summary["seconds"] >= sum(r["seconds"] for r in after[1:]) > 0
    assert json.loads((clean / "config.json").read_text())["rounds"] == 4
    rounds = {r.round for r in Ledger.read_csv(clean / "ledger.csv").rows if r.kind == "train"}
    assert rounds == {1, 2, 3, 4}
