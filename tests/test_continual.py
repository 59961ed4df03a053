"""``--init-adapter`` and ``fedkron continual``: tiny random BERT, real rounds in this process
(the server's federation over a loopback Grid to the real ClientApp handlers; no Ray)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from fedkron.runconfig.fields import RunConfig

TINY = dict(
    model="tiny-bert",
    clients=2,
    rounds=1,
    local_steps=2,
    batch_size=4,
    max_length=16,
    eval_samples=12,
    lr=5e-3,
    uplink="fp32",
    downlink="fp32",
)
WORDS = ["great fun", "dull and slow", "a fine cast", "too long", "warm and witty", "flat"]


def _sentences(n: int, offset: int) -> list[tuple[str, int]]:
    return [(f"{WORDS[(i + offset) % 6]} film {i}", (i + offset) % 2) for i in range(n)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """sst2, sentiment (five domains) and rte laid out as in shared/data, a few rows each."""
    root = tmp_path_factory.mktemp("continual-data")
    files = {"sst2": ("train.tsv", "dev.tsv")}
    for split, n in zip(files["sst2"], (24, 12)):
        (root / "sst2").mkdir(exist_ok=True)
        rows = "".join(f"{t}\t{y}\n" for t, y in _sentences(n, 0))
        (root / "sst2" / split).write_text("sentence\tlabel\n" + rows)
    for d, domain in enumerate(("airline", "books", "dvd", "electronics", "kitchen")):
        folder = root / "blitzer_sentiment" / domain
        folder.mkdir(parents=True)
        for split, n in (("train.tsv", 6), ("dev.tsv", 3)):
            rows = "".join(f"{domain} {t}\t{y}\n" for t, y in _sentences(n, d + 1))
            (folder / split).write_text("sentence\tlabel\n" + rows)
    (root / "rte").mkdir()
    for split, n in (("train.tsv", 24), ("dev.tsv", 12)):
        rows = "".join(
            f"{i}\tthe {WORDS[i % 6]} film {i}\tit is {WORDS[(i * 5) % 6]}\t{('entailment', 'not_entailment')[i % 2]}\n"
            for i in range(n)
        )
        (root / "rte" / split).write_text("index\tsentence1\tsentence2\tlabel\n" + rows)
    return str(root)


@pytest.fixture(scope="module", autouse=True)
def one_thread_and_identity():
    """Tiny models on a shared machine: one intra-op thread is far faster than oversubscribed ones.
    Messages built outside a Flower run need a run and node id (conftest's flower_identity, for the
    module's runs)."""
    from flwr.supercore.task_identity import TaskIdentity

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TaskIdentity, "_run_id", 1)
        mp.setattr(TaskIdentity, "_node_id", 0)
        mp.setattr(TaskIdentity, "_task_id", 1)
        yield
    torch.set_num_threads(threads)


def loopback_run(cfg: RunConfig, progress=None) -> dict:
    """A real run (preflight, rounds, results folder) with the ClientApp's handlers in this process."""
    from loopback import LoopbackGrid

    from fedkron.client import worker
    from fedkron.server.federation import run_federation
    from fedkron.sim.simulate import prepared

    handlers = {"train": worker.handle_train, "evaluate": worker.handle_evaluate, "query": worker.handle_query}
    cfg = prepared(cfg)
    grid = LoopbackGrid(cfg.clients, lambda msg, ctx: handlers[msg.metadata.message_type](msg, ctx))
    return run_federation(grid, cfg, progress, cfg.resume)


def _cfg(data_dir: str, out: Path, **changes) -> RunConfig:
    return RunConfig(**{**TINY, "task": "sst2", "data_dir": data_dir, "out": str(out), **changes})


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def source(data_dir, tmp_path_factory) -> Path:
    """A finished 2-round Kron-LoRA run on sst2 (per-factor), whose adapter the other runs start from."""
    out = tmp_path_factory.mktemp("source") / "sst2"
    loopback_run(_cfg(data_dir, out, rounds=2), None)
    return out


def test_init_adapter_starts_from_exactly_the_stored_adapter(source, data_dir, tmp_path):
    """Round 0 of a run started from the source's folder scores what the source's last round scored
    (same task, rows and seed), and its round 0 differs from a seeded start's."""
    final = _rows(source)[-1]
    started = tmp_path / "started"
    summary = loopback_run(_cfg(data_dir, started, init_adapter=str(source)))
    first = _rows(started)[0]
    assert first["round"] == 0 and final["round"] == 2
    assert first["accuracy"] == final["accuracy"]
    assert first["loss"] == pytest.approx(final["loss"], abs=1e-6)
    assert summary["init_adapter"] == str(source)
    assert _rows(source)[0]["loss"] != pytest.approx(first["loss"], abs=1e-6)  # not the seeded init
    by_file = tmp_path / "by-file"  # the adapter file itself names the same start
    loopback_run(_cfg(data_dir, by_file, init_adapter=str(source / "adapter" / "adapter_model.safetensors")))
    assert _rows(by_file)[0]["loss"] == pytest.approx(final["loss"], abs=1e-6)


def test_incompatible_adapters_are_refused_naming_what_differs(source, data_dir, tmp_path):
    from fedkron.server.preflight import model_problems

    def problems(**changes) -> str:
        cfg = _cfg(data_dir, tmp_path / "x", **{"init_adapter": str(source), **changes})
        return "\n".join(model_problems(cfg.resolved()))

    assert problems() == ""
    assert "rank 4 (this run 2)" in problems(rank=2)
    assert "method 'kron-lora' (this run 'lora')" in problems(method="lora")
    assert "alpha 16.0 (this run 8.0)" in problems(alpha=8.0)
    assert "targets 'all-linear' (this run 'query,value')" in problems(targets="query,value")
    exact = problems(aggregation="exact")
    assert "--aggregation exact" in exact and "'per-factor'" in exact
    assert "no stored adapter" in problems(init_adapter=str(tmp_path / "nothing"))
    bare = tmp_path / "bare"  # an adapter folder alone (no run config): the header is checked against the model
    shutil.copytree(source / "adapter", bare)
    meta = json.loads((bare / "adapter_config.json").read_text())
    assert meta["config"]["rank"] == 4
    shapes = problems(init_adapter=str(bare), targets="query,value")
    assert "does not fit this run's model" in shapes and "extra" in shapes


def test_heads_carry_over_only_between_tasks_with_the_same_labels(source, data_dir):
    from fedkron.server.init_adapter import head_carried, source_record

    record = source_record(source)
    assert record["task"] == "sst2"
    assert head_carried(_cfg(data_dir, "x", task="sentiment"), record)  # negative / positive both
    assert not head_carried(_cfg(data_dir, "x", task="rte"), record)  # entailment labels: a new head
    assert not head_carried(_cfg(data_dir, "x", task="sentiment"), None)  # labels unknown


def test_forgetting_is_best_earlier_minus_final():
    from fedkron.sim.continual import forgetting, standard_error

    rows = [
        {"a": 0.80, "b": 0.50, "c": 0.25},
        {"a": 0.70, "b": 0.90, "c": 0.30},
        {"a": 0.60, "b": 0.85, "c": 0.70},
    ]
    lost = forgetting(rows, ["a", "b", "c"])
    assert lost["a"] == pytest.approx(0.80 - 0.60)  # best of stages 1..2, not the zero-shot rows
    assert lost["b"] == pytest.approx(0.90 - 0.85)
    assert lost["c"] is None
    assert standard_error(0.8, 100) == pytest.approx(0.04)


@pytest.fixture(scope="module")
def continual(data_dir, tmp_path_factory):
    """sst2 → sentiment → rte, one Kron-LoRA run, real stages over the loopback Grid."""
    from fedkron.sim.compare import parse_runs
    from fedkron.sim.continual import run_continual

    out = tmp_path_factory.mktemp("continual")
    report = run_continual(
        _cfg(data_dir, out), ["sst2", "sentiment", "rte"], parse_runs("kron-lora:fp32"), out, run=loopback_run
    )
    return out, report


def test_continual_writes_the_retention_matrix_from_the_stages(continual):
    out, report = continual
    data = json.loads((out / "continual.json").read_text())
    assert data["tasks"] == ["sst2", "sentiment", "rte"]
    run = data["runs"]["kron-lora:fp32"]
    stages = run["stages"]
    assert [(s["stage"], s["task"]) for s in stages] == [(1, "sst2"), (2, "sentiment"), (3, "rte")]
    folders = [out / "kron-lora-fp32" / f"stage{k}-{t}" for k, t in ((1, "sst2"), (2, "sentiment"), (3, "rte"))]
    for k, folder in enumerate(folders):
        summary = json.loads((folder / "summary.json").read_text())
        cells = stages[k]["cells"]
        assert set(cells) == {"sst2", "sentiment", "rte"}
        assert cells[summary["task"]]["accuracy"] == summary["final_accuracy"]  # the diagonal: the stage's own score
        assert cells[summary["task"]]["n"] == summary["eval_rows"]
        for cell in cells.values():
            assert cell["se"] == pytest.approx(math.sqrt(cell["accuracy"] * (1 - cell["accuracy"]) / cell["n"]))
        if k:  # stage k+1 starts from stage k's adapter: its round 0 is the matrix's cell
            config = json.loads((folder / "config.json").read_text())
            assert config["init-adapter"] == str(folders[k - 1])
            assert _rows(folder)[0]["accuracy"] == stages[k - 1]["cells"][summary["task"]]["accuracy"]
    assert stages[2]["cells"]["sentiment"]["head_stage"] == 2  # rte's new head: sentiment keeps its own
    assert stages[2]["cells"]["sst2"]["head_stage"] == 2  # sst2's labels: the head sentiment carried on
    assert stages[0]["cells"]["rte"]["head_stage"] is None  # no rte head yet: the seeded one
    acc = [{t: s["cells"][t]["accuracy"] for t in data["tasks"]} for s in stages]
    assert run["forgetting"]["sst2"] == pytest.approx(max(acc[0]["sst2"], acc[1]["sst2"]) - acc[2]["sst2"])
    assert run["forgetting"]["rte"] is None
    text = report.read_text()
    assert "| 2 (sentiment) |" in text and f"{100 * acc[1]['sst2']:.1f} ± " in text and "## Forgetting" in text


def test_continual_resumes_stage_by_stage(continual, data_dir, tmp_path, monkeypatch):
    """A finished stage is kept (not run, not scored again); a folder with another run is refused;
    without --resume a folder holding stages is refused before any work."""
    from fedkron.runconfig.fields import ConfigError
    from fedkron.sim import continual as module
    from fedkron.sim.compare import parse_runs

    out = tmp_path / "copy"
    shutil.copytree(continual[0], out)
    for path in out.rglob("config.json"):  # the copies' stage chain points into the copy
        record = json.loads(path.read_text())
        record["out"] = record["out"].replace(str(continual[0]), str(out))
        record["init-adapter"] = record["init-adapter"].replace(str(continual[0]), str(out))
        path.write_text(json.dumps(record))
    shutil.rmtree(out / "kron-lora-fp32" / "stage3-rte")  # stage 3 never ran
    (out / "kron-lora-fp32" / "retention-stage3.json").unlink()
    ran = []

    def run(cfg, progress=None):
        ran.append(cfg.task)
        return loopback_run(cfg, progress)

    tasks, specs = ["sst2", "sentiment", "rte"], parse_runs("kron-lora:fp32")
    scored = []
    original = module.Scorer.cell
    monkeypatch.setattr(module.Scorer, "cell", lambda self, k, j: scored.append((k, j)) or original(self, k, j))
    module.run_continual(_cfg(data_dir, out), tasks, specs, out, run=run, resume=True)
    assert ran == ["rte"]
    assert sorted({k for k, _ in scored}) == [2]  # stages 1 and 2 read back from their cached rows
    with pytest.raises(ConfigError, match="holds a run"):
        module.run_continual(_cfg(data_dir, out), tasks, specs, out, run=run)
    with pytest.raises(ConfigError, match="other settings"):
        module.run_continual(_cfg(data_dir, out, lr=1e-3), tasks, specs, out, run=run, resume=True)
    assert ran == ["rte"]


def test_exact_aggregation_starts_only_from_the_seeded_frozen_factors(data_dir, tmp_path):
    """exact → exact with the same seed starts from the stored adapter (round 0 = the source's last
    round); a stored adapter whose frozen factors were changed is refused when it is loaded."""
    from safetensors.torch import load_file, save_file

    from fedkron.adapters import adapter_state_dict
    from fedkron.data.client_data import model_shape
    from fedkron.models import build_model
    from fedkron.runconfig.fields import ConfigError
    from fedkron.server.init_adapter import initial_state

    source = tmp_path / "exact"
    loopback_run(_cfg(data_dir, source, aggregation="exact"))
    started = tmp_path / "started"
    loopback_run(_cfg(data_dir, started, aggregation="exact", init_adapter=str(source)))
    assert _rows(started)[0]["loss"] == pytest.approx(_rows(source)[-1]["loss"], abs=1e-6)
    weights = source / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    frozen = next(n for n in tensors if n.endswith(".kron_A"))  # Kron-LoRA's A never travels in exact mode
    tensors[frozen] = tensors[frozen] + 0.5
    save_file(tensors, str(weights))
    cfg = _cfg(data_dir, tmp_path / "x", aggregation="exact", init_adapter=str(source)).resolved()
    model = build_model(cfg, *model_shape(cfg))
    with pytest.raises(ConfigError, match="frozen factors are not the seeded init"):
        initial_state(cfg, model, {k: v.clone() for k, v in adapter_state_dict(model).items()})


def test_continual_cli_refuses_bad_tasks_before_any_work(capsys, tmp_path):
    from fedkron.cli import main

    out = tmp_path / "out"
    for argv, text in (
        (["--tasks", "sst2"], "at least two"),
        (["--tasks", "sst2,nope"], "'nope'"),
        (["--tasks", "sst2,rte,sst2"], "twice"),
        (["--tasks", "sst2,rte", "--task", "rte"], "not --task"),
        (["--tasks", "sst2,sentiment", "--partition", "natural"], "partition 'natural' needs"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(["continual", *argv, "--out", str(out)])
        assert stopped.value.code == 2
        assert text in capsys.readouterr().err, argv
    assert not out.exists()
