"""Every problem a run can know of before Ray starts is reported before Ray starts, and no run is
overwritten or silently changed (real `fedkron sim` processes: exit status 2, one line each)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # real `fedkron sim` processes (their imports take seconds each)
ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--model",
    "tiny-bert",
    "--task",
    "sst2",
    "--clients",
    "2",
    "--rounds",
    "1",
    "--local-steps",
    "1",
    "--max-length",
    "16",
    "--eval-samples",
    "8",
]


def _fedkron(*args, timeout=120):
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedkron", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc, time.perf_counter() - t0


def test_bad_values_are_all_reported_at_once_before_ray(tmp_path):
    proc, _ = _fedkron(
        "sim",
        *TINY,
        "--shape-policy",
        "square",
        "--block-size",
        "16",
        "--alpha",
        "inf",
        "--server-lr",
        "nan",
        "--seed",
        str(2**40),
        "--rank",
        str(10**6),
        "--min-replies",
        "3",
        "--fraction",
        "0.5",
        "--out",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    for fragment in (
        "shape-policy 'square' is not one of paper, peft",
        "block-size 16 does not suit the uplink codec nf4",
        "alpha must be a finite number",
        "server-lr must be a finite number",
        "seed must be in [0, 2^32)",
        "rank must be ≤ 4096",
        "min-replies must be in [1, the 1 clients sampled per round]",
    ):
        assert fragment in err, fragment
    assert "Ray" not in proc.stdout + err and not (tmp_path / "o").exists()  # values: checked before any folder


def test_explicit_zero_clients_is_refused_not_silently_defaulted(tmp_path):
    proc, _ = _fedkron("sim", *TINY[:4], "--clients", "0", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "--clients must be ≥ 1 (got 0" in proc.stderr


@pytest.mark.parametrize(
    "model, message",
    [
        ("/definitely/not/a/model", "model folder '/definitely/not/a/model' does not exist"),
        ("./models/missing", "model folder './models/missing' does not exist"),
    ],
)
def test_a_model_that_cannot_be_found_is_one_line(tmp_path, model, message):
    proc, seconds = _fedkron("sim", *TINY, "--model", model, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())  # the folder says why, too
    assert summary["status"].startswith("failed: ") and message in summary["status"]


def test_an_unwritable_results_folder_and_bad_data_stop_before_ray(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc, _ = _fedkron("sim", *TINY, "--out", str(blocker / "run"))
    assert proc.returncode == 2 and f"results folder {blocker / 'run'} cannot be written" in proc.stderr
    data = tmp_path / "data" / "sst2"
    data.mkdir(parents=True)
    (data / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\nmeh\tx\n")
    (data / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    proc, _ = _fedkron("sim", *TINY, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "train.tsv line 4: label 'x'" in proc.stderr and "Traceback" not in proc.stderr


def _a_finished_looking_run(folder: Path, rounds=2, checkpoint=True):
    from fedkron.runconfig.fields import RunConfig

    folder.mkdir(parents=True)
    cfg = RunConfig(
        model="tiny-bert",
        task="sst2",
        clients=2,
        rounds=rounds,
        local_steps=1,
        max_length=16,
        eval_samples=8,
        out=str(folder),
    ).resolved()
    (folder / "config.json").write_text(json.dumps(cfg.to_record()))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"round": r}) + "\n" for r in range(rounds + 1)))
    if checkpoint:  # written by the server's own writer, so it reads back as a real one
        from fedkron.server.checkpoint import save_checkpoint
        from fedkron.server.ledger import Ledger

        save_checkpoint(folder, rounds, {"w": torch.zeros(2)}, ({}, {}), Ledger(), [], cfg.to_record())
    return cfg


def test_a_run_is_never_overwritten_without_overwrite(tmp_path):
    folder = tmp_path / "run"
    _a_finished_looking_run(folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    proc, _ = _fedkron("sim", *TINY, "--out", str(folder))
    assert proc.returncode == 2 and f"results folder {folder} holds a run; pass --overwrite" in proc.stderr
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_overwrite_clears_the_old_run_before_the_new_one(tmp_path, monkeypatch):
    from fedkron.cli import main

    folder = tmp_path / "run"
    _a_finished_looking_run(folder)
    (folder / "notes.txt").write_text("mine")  # not a run file: kept

    def started(**kwargs):
        raise SystemExit(99)

    monkeypatch.setattr("flwr.simulation.run_simulation", started)
    with pytest.raises(SystemExit) as info:
        main(["sim", *TINY, "--out", str(folder), "--overwrite"])
    assert info.value.code == 99  # preflight passed and the run was about to start
    assert not (folder / "checkpoint").exists() and not (folder / "metrics.jsonl").exists()
    assert (folder / "notes.txt").read_text() == "mine"


def test_resume_refuses_a_lost_checkpoint_and_changed_settings(tmp_path):
    lost = tmp_path / "lost"
    _a_finished_looking_run(lost, checkpoint=False)
    proc, _ = _fedkron("sim", "--resume", str(lost), "--rounds", "3")
    assert proc.returncode == 2 and "metrics.jsonl has rounds up to 2 but checkpoint/ is missing" in proc.stderr
    assert len((lost / "metrics.jsonl").read_text().splitlines()) == 3  # untouched

    edited = tmp_path / "edited"
    _a_finished_looking_run(edited)
    saved = json.loads((edited / "config.json").read_text())
    saved.update({"uplink": "int8", "seed": 7})
    (edited / "config.json").write_text(json.dumps(saved))
    proc, _ = _fedkron("sim", "--resume", str(edited), "--rounds", "3")
    assert proc.returncode == 2
    assert "uplink 'nf4' (now 'int8')" in proc.stderr and "seed 0 (now 7)" in proc.stderr
