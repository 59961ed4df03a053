"""A full disk or a crash at any moment leaves a results folder that --resume continues, or refuses
in one line naming the file, before Ray starts."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from fedkron.cli import main
from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.server.checkpoint import latest_round, load_checkpoint, resume_problems, save_checkpoint
from fedkron.server.ledger import Ledger
from fedkron.server.results import ResultsFolder, read_metrics, write_json

ROW = {"round": 0, "accuracy": 0.5, "loss": 0.69}


def _full_disk_after(monkeypatch, target: str, nbytes: int):
    """os.write that writes ``nbytes`` of the first write to a file named ``target``, then fails
    with ENOSPC (a disk that fills up in the middle of a row)."""
    real_write = os.write

    def write(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) != target:
            return real_write(fd, data)
        if write.calls == 0 and len(data) > nbytes:
            write.calls += 1
            return real_write(fd, data[:nbytes])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    write.calls = 0
    monkeypatch.setattr(os, "write", write)
    return write


def test_a_metrics_row_cut_off_by_a_full_disk_is_taken_back(tmp_path, monkeypatch):
    results = ResultsFolder(tmp_path)
    results.append_metrics(ROW)
    before = results.metrics_path.read_bytes()
    fake = _full_disk_after(monkeypatch, "metrics.jsonl", 10)
    with pytest.raises(OSError, match="No space left"):
        results.append_metrics({**ROW, "round": 1})
    assert fake.calls == 1  # half a row did reach the file before the disk was full
    monkeypatch.undo()
    assert results.metrics_path.read_bytes() == before  # ... and was cut back
    assert [r["round"] for r in results.rows] == [0]


def test_a_json_file_that_cannot_be_written_keeps_its_old_content(tmp_path, monkeypatch):
    path = write_json(tmp_path / "summary.json", {"status": "running"})
    real_replace = os.replace

    def replace(src, dst):  # the disk fills while the new copy is written: it never replaces the old one
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        write_json(path, {"status": "completed"})
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads(path.read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temporary file left


def test_read_metrics_drops_a_cut_off_last_line_and_names_a_damaged_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "round": 1})[:17])
    rows, notice = read_metrics(path)
    assert [r["round"] for r in rows] == [0] and "last line (line 2) was cut off" in notice
    path.write_text("{oops\n" + json.dumps(ROW) + "\n")
    with pytest.raises(ValueError, match="line 1 is not a metrics row"):
        read_metrics(path)


def _run_folder(out: Path, rounds_done: int) -> RunConfig:
    """A results folder as a run killed after ``rounds_done`` rounds leaves it (real checkpoints)."""
    cfg = RunConfig(model="tiny-bert", task="sst2", clients=2, rounds=3, out=str(out)).resolved()
    results = ResultsFolder(out)
    results.write_json("config.json", cfg.to_record())
    for rnd in range(rounds_done + 1):
        results.append_metrics({**ROW, "round": rnd})
        if rnd:
            state = {"a": torch.full((2, 2), float(rnd))}
            save_checkpoint(out, rnd, state, ({}, {}), Ledger(), results.rows, cfg.to_record())
    return cfg


def _resume_cli(out: Path, capsys, monkeypatch) -> tuple[int, str]:
    """`fedkron sim --resume OUT`, stopped where the simulation would start (before Ray)."""

    def no_simulation(*args, **kwargs):
        raise AssertionError("the simulation started")

    monkeypatch.setattr("fedkron.sim.simulate.run_many", no_simulation)
    with pytest.raises(BaseException) as info:
        main(["sim", "--resume", str(out)])
    return getattr(info.value, "code", None), capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda out: (out / "config.json").unlink(), "no config.json there"),
        (lambda out: _clip_pointer_and_remove(out, 2), "checkpoint/latest.json is damaged"),
        (lambda out: _remove_checkpoint_folder(out, 2), "checkpoint/round-2, named by checkpoint/latest.json"),
        (lambda out: _clip(out / "checkpoint" / "round-2" / "global.safetensors"), "round-2/global.safetensors"),
        (lambda out: _clip(out / "checkpoint" / "round-2" / "state.json"), "round-2/state.json cannot be read"),
    ],
)
def test_resume_over_damage_it_cannot_repair_is_one_line_before_ray(tmp_path, capsys, monkeypatch, damage, message):
    _run_folder(tmp_path, 2)
    damage(tmp_path)
    code, err = _resume_cli(tmp_path, capsys, monkeypatch)
    assert code == 2, err
    assert message in err and str(tmp_path) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2  # "cannot start the run:" + the line


def _clip(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _clip_pointer_and_remove(out: Path, rnd: int) -> None:
    _clip(out / "checkpoint" / "latest.json")
    _remove_checkpoint_folder(out, rnd)


def _remove_checkpoint_folder(out: Path, rnd: int) -> None:
    import shutil

    shutil.rmtree(out / "checkpoint" / f"round-{rnd}")


def test_resume_over_damage_a_crash_leaves_goes_on_with_a_notice(tmp_path, caplog):
    cfg = _run_folder(tmp_path, 2)
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + json.dumps({**ROW, "round": 3})[:20])  # cut off mid-row
    resumed = RunConfig.from_mapping({**cfg.to_record(), "resume": True}).resolved()
    assert resume_problems(resumed) == []
    assert "last line (line 4) was cut off" in caplog.text
    # latest.json cut off but the checkpoint it named is complete: continue from the newest folder
    _clip(tmp_path / "checkpoint" / "latest.json")
    assert resume_problems(resumed) == [] and latest_round(tmp_path) == 2
    assert "continuing from checkpoint/round-2" in caplog.text
    assert torch.equal(load_checkpoint(tmp_path).global_state["a"], torch.full((2, 2), 2.0))
    # a resumed run rewrites metrics.jsonl from the checkpoint: the cut-off row is gone
    results = ResultsFolder(tmp_path, keep=load_checkpoint(tmp_path).metrics)
    assert [r["round"] for r in read_metrics(results.metrics_path)[0]] == [0, 1, 2]


def test_an_unreadable_config_json_is_taken_from_the_checkpoint_or_refused(tmp_path, capsys):
    from fedkron.cli import build_parser, resume_config

    cfg = _run_folder(tmp_path, 1)
    _clip(tmp_path / "config.json")
    resumed = resume_config(build_parser().parse_args(["sim", "--resume", str(tmp_path)]))
    assert (resumed.rounds, resumed.clients, resumed.resume) == (cfg.rounds, cfg.clients, True)
    assert "using the settings saved with checkpoint/round-1" in capsys.readouterr().err
    _remove_checkpoint_folder(tmp_path, 1)
    (tmp_path / "checkpoint" / "latest.json").unlink()
    with pytest.raises(ConfigError, match=r"config\.json cannot be read .*no checkpoint keeps the settings"):
        resume_config(build_parser().parse_args(["sim", "--resume", str(tmp_path)]))


@pytest.mark.slow
def test_a_full_disk_mid_run_then_resume_completes_the_run(tmp_path, monkeypatch):
    """A real run whose disk fills while round 2's metrics row is written fails with its summary
    saying so; --resume then continues from round 1's checkpoint to the end."""
    from fedkron.sim.simulate import RunFailed, run_sim

    out = tmp_path / "run"
    cfg = RunConfig(
        model="tiny-bert", task="sst2", clients=2, rounds=2, local_steps=2, batch_size=8,
        max_length=32, eval_samples=32, out=str(out),
    )  # fmt: skip
    real_write, rows_written = os.write, []

    def write(fd, data):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) == "metrics.jsonl":
            if len(rows_written) == 2:  # round 2's row: half of it, then the disk is full
                rows_written.append(real_write(fd, data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            rows_written.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(RunFailed, match="No space left on device"):
        run_sim(cfg)
    monkeypatch.undo()
    assert json.loads((out / "summary.json").read_text())["status"].startswith("failed: OSError")
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl")[0]] == [0, 1]
    assert read_metrics(out / "metrics.jsonl")[1] is None  # no half row left behind
    summary = run_sim(RunConfig.from_mapping({**json.loads((out / "config.json").read_text()), "resume": True}))
    assert summary["status"] == "completed" and summary["resumed_from_round"] == 1
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl")[0]] == [0, 1, 2]
