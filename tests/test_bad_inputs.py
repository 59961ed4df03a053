"""Every input a user can get wrong is refused before Ray starts, in one line that names the file (and
its line) and the problem, with exit status 2, no traceback, and no run files written: ``--task custom``
files, model folders, the results folder's disk, and a refused ``--overwrite`` over a finished run.

Most cases drive the real ``fedkron sim`` entry point in this process (``cli.main``) with Flower's
``run_simulation`` replaced by a trap, so a case that slipped past preflight fails with exit 99
instead of starting Ray; a few run ``python -m fedkron`` as a subprocess to see exactly what a user sees.
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-bert", "--clients", "2", "--rounds", "1", "--local-steps", "1", "--max-length", "16"]
GOOD_ROWS = "".join(f"{'good' if i % 2 else 'bad'} film {i},{i % 2}\n" for i in range(12))
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint", "ledger.csv", "client-state", "adapter")


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


# name, files to write ({name: content}), extra flags ({train}/{eval}/{dir} filled in), fragment expected
CUSTOM_CASES = [
    ("ragged-row", {"t.csv": "text,label\na,0\nb\n"}, [], "t.csv line 3: 1 comma-separated fields, expected 2"),
    ("no-label-column", {"t.csv": "text,verdict\na,0\nb,1\n"}, [], "expected a column 'label'"),
    ("no-text-column", {"t.csv": "review,label\na,0\nb,1\n"}, [], "expected a column 'text'"),
    ("field-over-128k", {"t.csv": 'text,label\n"' + "x" * (130 << 10) + '",0\n'}, [], "t.csv line 2: not valid"),
    ("not-utf8", {"t.csv": b"text,label\nna\xefve,0\nb,1\n"}, [], "t.csv line 2: byte b'\\xef' is not UTF-8"),
    ("empty", {"t.csv": ""}, [], "t.csv is empty"),
    ("header-only", {"t.csv": "text,label\n"}, [], "t.csv has a header line but no rows"),
    ("one-class", {"t.csv": "text,label\na,1\nb,1\n"}, [], "has 1 distinct label(s)"),
    ("negative-label", {"t.csv": "text,label\na,0\nb,-1\n"}, [], "t.csv line 3: label '-1' is negative"),
    ("null-label", {"t.jsonl": '{"text": "a", "label": 0}\n{"text": "b", "label": null}\n'}, [], "line 2"),
    ("json-not-array", {"t.json": '{"text": "a", "label": 0}'}, [], "expected a JSON array of objects"),
    ("json-100k-deep", {"t.json": _deep_json(100_000)}, [], "t.json: JSON nested too deeply"),
    ("jsonl-100k-deep", {"t.jsonl": _deep_json(100_000)}, [], "t.jsonl line 1: JSON nested too deeply"),
    ("json-5000-digit-int", {"t.json": '[{"text": "a", "label": ' + "1" * 5000 + "}]"}, [], "t.json: a JSON value"),
    ("jsonl-bad-line", {"t.jsonl": '{"text": "a", "label": 0}\n{"text": \n'}, [], "t.jsonl line 2: not valid JSON"),
    ("jsonl-empty", {"t.jsonl": "\n\n"}, [], "t.jsonl has no rows"),
    ("label-double-minus", {"t.csv": "text,label\na,0\nb,--5\n"}, [], "labels mix ints"),
    ("ints-and-strings", {"t.csv": "text,label\na,0\nb,pos\n"}, [], "labels mix ints (0 at "),
    ("unknown-suffix", {"t.txt": "text,label\na,0\n"}, [], "unknown file type '.txt'"),
    ("text-not-a-string", {"t.jsonl": '{"text": 5, "label": 0}\n{"text": "b", "label": 1}\n' * 6}, [], "line 1"),
    (
        "bad-eval-file",
        {"t.csv": "text,label\n" + GOOD_ROWS, "e.csv": "text,label\na,0\nb\n"},
        ["--eval-file", "{dir}/e.csv"],
        "e.csv line 3: 1 comma-separated fields",
    ),
    ("train-is-a-folder", {"d/x.csv": "text,label\na,0\n"}, ["--train-file", "{dir}/d"], "d is a folder"),
    ("train-missing", {}, ["--train-file", "{dir}/missing.csv"], "missing.csv does not exist"),
]


@pytest.fixture
def ray_trap(monkeypatch):
    """Replace Flower's simulation start: reaching it means preflight let a bad input through."""

    def started(**kwargs):
        raise SystemExit(99)

    monkeypatch.setattr("flwr.simulation.run_simulation", started)


def _sim_in_process(capsys, *flags) -> tuple[int, str]:
    """``fedkron sim FLAGS`` through the real entry point: (exit status, stderr)."""
    from fedkron.cli import main

    with pytest.raises(SystemExit) as info:
        main(["sim", *flags])
    return info.value.code, capsys.readouterr().err


def _assert_one_line_refusal(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err  # 99: the run got as far as starting Ray
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedkron: cannot start the run: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


def _no_run_files(folder: Path) -> None:
    assert not any((folder / name).exists() for name in RUN_FILES), sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("case, files, flags, fragment", CUSTOM_CASES, ids=[c[0] for c in CUSTOM_CASES])
def test_a_bad_custom_file_is_one_line_naming_it_before_ray(tmp_path, capsys, ray_trap, case, files, flags, fragment):
    for name, content in files.items():
        _write(tmp_path / name, content)
    train = next((name for name in files if name.startswith("t.")), "t.csv")
    flags = [f.format(dir=tmp_path) for f in flags]
    if "--train-file" not in flags:
        flags = ["--train-file", str(tmp_path / train), *flags]
    out = tmp_path / "out"
    code, err = _sim_in_process(capsys, *TINY, "--task", "custom", *flags, "--out", str(out))
    _assert_one_line_refusal(code, err, fragment)
    _no_run_files(out)
    summary = json.loads((out / "summary.json").read_text())  # the fresh folder says why (README)
    assert summary["status"].startswith("failed: ") and fragment in summary["status"]


def _limited_memory(gib: int):
    """preexec_fn: cap the child's address space, so that code building a label range of 10^9 ids
    fails with MemoryError in the child instead of calling the OOM killer onto the machine."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (gib << 30, gib << 30))

    return limit


def test_a_huge_label_id_is_refused_without_building_its_range(tmp_path):
    """A label of 10^9 once built set(range(10^9)) (24 GB, the OOM killer); memory now follows the
    labels seen, and an id that no head could have is refused in one line."""
    script = """if True:
        from fedkron.data.custom import infer_labels
        from fedkron.data.records import DataFormatError
        try:
            infer_labels([(0, None), (10**9, None)])
        except DataFormatError as err:
            print("refused:", err)
        print("sparse:", infer_labels([(0, None), (5, None)]))
    """
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, preexec_fn=_limited_memory(4)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: fedkron.data: label 1000000000 is above 9,999" in proc.stdout
    assert "sparse: (6, ())" in proc.stdout  # sparse but sane ids still work


def _pickle_only_model(folder: Path) -> Path:
    """A model folder as an old save_pretrained left it: config, tokenizer, pytorch_model.bin."""
    _write(folder / "config.json", json.dumps({"model_type": "bert", "num_hidden_layers": 1, "hidden_size": 32}))
    _write(folder / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ngood\nbad\n")
    _write(folder / "pytorch_model.bin", b"\x80\x04not a real pickle")  # never read: refused by its name
    return folder


def test_a_model_folder_with_only_pickle_weights_is_refused_before_ray(tmp_path, capsys, ray_trap):
    folder = _pickle_only_model(tmp_path / "model")
    out = tmp_path / "out"
    code, err = _sim_in_process(capsys, *TINY, "--task", "sst2", "--model", str(folder), "--out", str(out))
    _assert_one_line_refusal(code, err, str(folder), "only pickle weights (pytorch_model.bin)", "never unpickles")
    _no_run_files(out)


@pytest.mark.parametrize(
    "name, content",
    [
        ("deep.json", _deep_json(100_000)),
        ("latin1.toml", b'name = "\xef"\n'),
        (
            "huge.json",
            json.dumps(
                {
                    "profile": [
                        {"name": "a", "weight": 1, "speed": 1, "down_mbps": 1, "up_mbps": 2, "latency_ms": 1}
                        | {"availability": 1, "dropout": 0}
                    ]
                }
            ).replace('"up_mbps": 2', '"up_mbps": 1' + "0" * 400),
        ),
    ],
)
def test_a_bad_devices_file_is_one_problem_line_before_ray(tmp_path, capsys, ray_trap, name, content):
    """--devices files that used to end in a RecursionError (3,000 lines of stderr), a
    UnicodeDecodeError or an OverflowError traceback."""
    path = _write(tmp_path / name, content)
    code, err = _sim_in_process(capsys, *TINY, "--task", "sst2", "--devices", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in err, err
    problems = [line for line in err.splitlines() if str(path) in line]
    assert len(problems) == 1 and len(err.splitlines()) <= 2, err  # checks.py's header line + this one
    assert not (tmp_path / "o").exists()  # values are checked before the results folder is made


def _finished_run(folder: Path) -> dict[Path, bytes]:
    """A folder that holds a finished run; returns every file's bytes, to compare afterwards."""
    _write(folder / "config.json", json.dumps({"task": "sst2", "model": "tiny-bert"}))
    _write(folder / "metrics.jsonl", '{"round": 0}\n{"round": 1}\n')
    _write(folder / "summary.json", json.dumps({"status": "done", "rounds_completed": 1}))
    _write(folder / "checkpoint" / "latest.json", json.dumps({"round": 1, "folder": "round-1"}))
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--task", "custom", "--train-file", "{dir}/t.csv"], "t.csv line 3"),
        (["--task", "sst2", "--model", "{dir}/no-such-model"], "does not exist"),
    ],
    ids=["bad-data", "bad-model"],
)
def test_a_refused_overwrite_leaves_the_finished_run_untouched(tmp_path, capsys, ray_trap, flags, fragment):
    _write(tmp_path / "t.csv", "text,label\na,0\nb\n")
    folder = tmp_path / "run"
    before = _finished_run(folder)
    flags = [f.format(dir=tmp_path) for f in flags]
    code, err = _sim_in_process(capsys, *TINY, *flags, "--out", str(folder), "--overwrite")
    _assert_one_line_refusal(code, err, fragment)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_failed_start_summary_replaces_only_an_earlier_failed_start(tmp_path, capsys, ray_trap):
    _write(tmp_path / "t.csv", "text,label\na,0\nb\n")
    folder = tmp_path / "out"
    _write(folder / "summary.json", json.dumps({"status": "failed: an older reason", "rounds_completed": 0}))
    code, err = _sim_in_process(
        capsys, *TINY, "--task", "custom", "--train-file", str(tmp_path / "t.csv"), "--out", str(folder)
    )
    _assert_one_line_refusal(code, err, "t.csv line 3")
    assert "t.csv line 3" in json.loads((folder / "summary.json").read_text())["status"]


def test_a_full_disk_is_refused_before_ray(tmp_path, capsys, ray_trap, monkeypatch):
    """The probe writes real bytes and fsyncs them: an empty file fits on a 100 %-full disk."""
    real_fsync = os.fsync

    def disk_full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".write-test-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full)
    out = tmp_path / "out"
    code, err = _sim_in_process(capsys, *TINY, "--task", "sst2", "--out", str(out))
    _assert_one_line_refusal(code, err, f"results folder {out} cannot be written: No space left on device")
    assert not [p for p in out.iterdir()]  # the probe is gone, and no summary could be promised


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only); skipped where it cannot be mounted."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk_and_a_nearly_full_one_are_refused(tiny_tmpfs, capsys, ray_trap):
    nearly = tiny_tmpfs / "nearly"
    code, err = _sim_in_process(capsys, *TINY, "--task", "sst2", "--out", str(nearly))
    _assert_one_line_refusal(code, err, f"results folder {nearly}: its disk has", "KiB free; a run needs")
    try:  # fill it to the last byte (on a 64 KiB tmpfs even creating a file may already fail)
        with open(tiny_tmpfs / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass
    full = tiny_tmpfs / "full"
    code, err = _sim_in_process(capsys, *TINY, "--task", "sst2", "--out", str(full))
    _assert_one_line_refusal(code, err, f"results folder {full} cannot be written")


def _fedkron(tmp_path, *args):
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    return subprocess.run(
        [sys.executable, "-m", "fedkron", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=_limited_memory(8),
    )


@pytest.mark.slow
def test_the_real_cli_refuses_a_deep_json_a_pickle_model_and_a_huge_label_in_one_line(tmp_path):
    """What a user sees: a separate `python -m fedkron sim` process, exit 2, one stderr line."""
    _write(tmp_path / "deep.json", _deep_json(100_000))
    _write(tmp_path / "big.csv", "text,label\na,0\nb,1000000000\n")
    folder = _pickle_only_model(tmp_path / "model")
    for flags, fragment in (
        (["--task", "custom", "--train-file", str(tmp_path / "deep.json")], "deep.json: JSON nested too deeply"),
        (["--task", "sst2", "--model", str(folder)], "only pickle weights"),
        (
            ["--task", "custom", "--train-file", str(tmp_path / "big.csv")],
            "big.csv line 3: label '1000000000' is above",
        ),
    ):
        proc = _fedkron(tmp_path, "sim", *TINY, *flags, "--out", str(tmp_path / "out"), "--overwrite")
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and "Ray" not in proc.stdout
        assert len(proc.stderr.strip().splitlines()) == 1 and fragment in proc.stderr, proc.stderr
        _no_run_files(tmp_path / "out")
