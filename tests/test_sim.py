"""Real Flower simulations on Ray: tiny random BERT for mechanics, pretrained MiniLM for learning."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from fedkron.adapters import adapter_state_dict
from fedkron.models import build_model
from fedkron.runconfig.fields import RunConfig
from fedkron.server.ledger import Ledger

pytestmark = pytest.mark.slow

TINY = dict(
    model="tiny-bert",
    task="sst2",
    clients=3,
    rounds=2,
    local_steps=3,
    batch_size=8,
    max_length=32,
    eval_samples=48,
    lr=5e-3,
)


def _payload_per_message(ledger: Ledger) -> float:
    ups = [r for r in ledger.rows if r.direction == "up" and r.kind == "train" and r.status == "ok"]
    return sum(r.payload for r in ups) / len(ups)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A real 3-run ``compare`` on Ray: kron-lora nf4 (partition 0 sends a corrupted payload),
    kron-lora fp32 (partition 1 raises) and kron-lora nf4 exact (clean), same task, seed and
    client schedule."""
    from fedkron.sim.compare import parse_runs, run_compare
    from fedkron.sim.faults import make_faulty_app
    from fedkron.sim.simulate import run_sim

    root = tmp_path_factory.mktemp("sim")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("fedkron").addHandler(handler)

    def run(cfg, progress=None):
        if cfg.aggregation == "exact":
            return run_sim(cfg, progress=progress)
        fault = ("nan-scales", (0,)) if cfg.uplink == "nf4" else ("raise", (1,))
        app = make_faulty_app(*fault)
        return run_sim(cfg, progress=progress, client_app=app)

    try:
        report = run_compare(
            RunConfig(**TINY),
            parse_runs("kron-lora:nf4:per-factor,kron-lora:fp32:per-factor,kron-lora:nf4:exact"),
            root,
            run=run,
        )
    finally:
        logging.getLogger("fedkron").removeHandler(handler)
    return {
        "root": root,
        "report": report,
        "logs": [r.getMessage() for r in records],
        "nf4": root / "kron-lora-nf4-per-factor",
        "fp32": root / "kron-lora-fp32-per-factor",
        "exact": root / "kron-lora-nf4-exact",
    }


def test_results_folder_is_complete(runs):
    folder = runs["nf4"]
    for name in ("metrics.jsonl", "summary.json", "ledger.csv", "accuracy_and_mb.png", "config.json"):
        assert (folder / name).is_file(), name
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    for key in ("accuracy", "loss", "bytes_up", "bytes_down", "seconds"):
        assert all(key in r for r in rows)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 2 and summary["bits"] == 4
    assert 0.0 < summary["majority_baseline"] < 1.0
    ledger = Ledger.read_csv(folder / "ledger.csv")
    assert summary["bytes_up"] == ledger.total("up") > 0
    assert summary["bytes_down"] == ledger.total("down") > 0
    assert sum(r["bytes_up"] for r in rows) == ledger.total("up", round=None) - ledger.total("up", round=0)


def test_global_factors_change(runs):
    cfg = RunConfig(**TINY).resolved()
    initial = adapter_state_dict(build_model(cfg, num_labels=2))
    final = load_file(str(runs["nf4"] / "adapter" / "adapter_model.safetensors"))
    assert set(final) == set(initial)
    changed = [k for k in initial if not torch.allclose(initial[k], final[k])]
    assert len(changed) > len(initial) // 2


def test_nf4_uplink_is_about_an_eighth_of_fp32(runs):
    nf4 = Ledger.read_csv(runs["nf4"] / "ledger.csv")
    fp32 = Ledger.read_csv(runs["fp32"] / "ledger.csv")
    ratio = _payload_per_message(nf4) / _payload_per_message(fp32)
    assert 0.11 < ratio < 0.16, ratio  # 4 bits + a float32 scale per 64 values ≈ 4.5/32


def test_corrupted_reply_is_dropped_and_logged(runs):
    nf4 = Ledger.read_csv(runs["nf4"] / "ledger.csv")
    rejected = [r for r in nf4.rows if r.status == "rejected"]
    assert [r.partition_id for r in rejected] == [0, 0]  # partition 0, both rounds
    rows = [json.loads(line) for line in (runs["nf4"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["rejected"] for r in rows[1:]] == [1, 1] and [r["accepted"] for r in rows[1:]] == [2, 2]
    assert sum("rejected reply" in m and "(partition 0)" in m for m in runs["logs"]) == 2
    clean = [json.loads(line) for line in (runs["fp32"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["rejected"] for r in clean[1:]] == [0, 0]


def test_a_client_that_raises_is_counted_failed_and_the_round_goes_on(runs):
    rows = [json.loads(line) for line in (runs["fp32"] / "metrics.jsonl").read_text().splitlines()]
    assert [(r["failed"], r["accepted"]) for r in rows[1:]] == [(1, 2), (1, 2)]
    summary = json.loads((runs["fp32"] / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_compare_report_reads_the_ledgers(runs):
    import csv

    rows = {r["run"]: r for r in csv.DictReader((runs["root"] / "results.csv").open())}
    assert set(rows) == {"kron-lora-nf4-per-factor", "kron-lora-fp32-per-factor", "kron-lora-nf4-exact"}
    for name, folder in (("kron-lora-nf4-per-factor", runs["nf4"]), ("kron-lora-fp32-per-factor", runs["fp32"])):
        ledger = Ledger.read_csv(folder / "ledger.csv")
        assert int(rows[name]["bytes_up"]) == ledger.total("up")
        assert int(rows[name]["bytes_down"]) == ledger.total("down")
        assert float(rows[name]["mb_up_total"]) == pytest.approx(ledger.total("up") / 1e6)
    text = runs["report"].read_text()
    assert "| kron-lora-nf4-per-factor | kron-lora | all-linear | nf4 / nf4 | per-factor |" in text
    assert "| kron-lora-fp32-per-factor | kron-lora | all-linear | fp32 / fp32 | per-factor |" in text
    for png in ("accuracy_vs_mb.png", "accuracy_per_round.png", "bytes_per_round.png"):
        assert (runs["root"] / png).stat().st_size > 1000


def test_exact_mode_end_to_end_sends_b1_and_head_both_ways_and_keeps_a_b2(runs):
    from fedkron.adapters import adapter_factor_roles
    from fedkron.protocol import sent_names

    cfg = RunConfig(**TINY).resolved()
    model = build_model(cfg, num_labels=2)
    initial, roles = adapter_state_dict(model), adapter_factor_roles(model)
    sent = sent_names(roles, "exact")
    summary = json.loads((runs["exact"] / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["trainable_params"] == sum(initial[n].numel() for n in sent) < summary["adapter_params"]
    final = load_file(str(runs["exact"] / "adapter" / "adapter_model.safetensors"))
    for name, role in roles.items():  # A and B2 never moved; B1 did
        if role in ("A", "B2"):
            assert torch.equal(final[name], initial[name]), name
    assert any(not torch.equal(final[n], initial[n]) for n in sent if roles[n] == "B1")
    rows = [json.loads(line) for line in (runs["exact"] / "metrics.jsonl").read_text().splitlines()]
    assert all(r["aggregation_error"] < 1e-4 for r in rows[1:])
    assert all(r["accepted"] == 3 for r in rows[1:])

    def per_message(folder, direction):
        ledger = Ledger.read_csv(folder / "ledger.csv")
        msgs = [r for r in ledger.rows if r.direction == direction and r.kind == "train" and r.status == "ok"]
        return sum(r.payload for r in msgs) / len(msgs)

    share = sum(initial[n].numel() for n in sent) / sum(v.numel() for v in initial.values())
    for direction in ("down", "up"):  # both directions carry only B1 + head
        ratio = per_message(runs["exact"], direction) / per_message(runs["nf4"], direction)
        assert ratio == pytest.approx(share, rel=0.1), (direction, ratio, share)


def test_dual_multiple_choice_head_runs_on_ray_and_trains_its_temperature(tmp_path, shared_data):
    """The dual layout reaches Ray clients and the server's evaluation alike (real ARC-Easy rows)."""
    from fedkron.sim.simulate import run_sim

    cfg = RunConfig(
        model="tiny-bert",
        task="arc-easy",
        mc_head="dual",
        data_dir=str(shared_data),
        clients=2,
        rounds=1,
        local_steps=3,
        batch_size=8,
        max_length=32,
        eval_samples=32,
        lr=5e-2,
        out=str(tmp_path / "dual"),
    )
    summary = run_sim(cfg)
    assert summary["status"] == "completed" and 0.0 <= summary["final_accuracy"] <= 1.0
    final = load_file(str(tmp_path / "dual" / "adapter" / "adapter_model.safetensors"))
    assert final["classifier.scale"].shape == () and abs(float(final["classifier.scale"]) - 20.0) > 1e-3


def _copy_compare(runs, tmp_path):
    import shutil

    root = tmp_path / "compare"
    shutil.copytree(runs["root"], root)
    return root


def test_resumed_compare_keeps_finished_runs_and_refuses_other_settings(runs, tmp_path):
    import csv

    from fedkron.runconfig.fields import ConfigError
    from fedkron.sim.compare import parse_runs, run_compare

    root = _copy_compare(runs, tmp_path)
    specs = parse_runs("kron-lora:nf4:per-factor,kron-lora:fp32:per-factor,kron-lora:nf4:exact")

    started = []  # run_compare catches a run's exception (one failed run must not lose the others)

    def must_not_run(cfg, progress=None):
        started.append(cfg.out)
        raise AssertionError(f"{cfg.out} was finished and should have been kept")

    run_compare(RunConfig(**TINY), specs, root, run=must_not_run, resume=True)
    assert started == []
    before = {r["run"]: r for r in csv.DictReader((runs["root"] / "results.csv").open())}
    after = {r["run"]: r for r in csv.DictReader((root / "results.csv").open())}
    for name in before:
        for col in ("bytes_up", "bytes_down", "final_accuracy"):
            assert after[name][col] == before[name][col]
    with pytest.raises(ConfigError, match=r"lr 0\.005 \(now 0\.001\)"):
        run_compare(RunConfig(**{**TINY, "lr": 1e-3}), specs, root, run=must_not_run, resume=True)
    assert started == []  # refused before any run started


def test_resumed_compare_extends_a_run_from_its_checkpoint(runs, tmp_path):
    from fedkron.sim.compare import parse_runs, resume_plan, run_compare, run_configs

    root = _copy_compare(runs, tmp_path)
    spec = parse_runs("kron-lora:nf4:exact")
    longer = RunConfig(**{**TINY, "rounds": 3})
    assert resume_plan(run_configs(longer, spec, root)[0]) == "resume"
    run_compare(longer, spec, root, resume=True)
    old = [json.loads(x) for x in (runs["exact"] / "metrics.jsonl").read_text().splitlines()]
    new = [json.loads(x) for x in (root / "kron-lora-nf4-exact" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in new] == [0, 1, 2, 3]
    assert [r["accuracy"] for r in new[:3]] == [r["accuracy"] for r in old]  # rounds 1-2 not re-run
    assert [r["bytes_up"] for r in new[:3]] == [r["bytes_up"] for r in old]
    assert new[3]["bytes_up"] > 0
    assert json.loads((root / "kron-lora-nf4-exact" / "summary.json").read_text())["rounds"] == 3
    assert resume_plan(run_configs(longer, spec, root)[0]) == "done"


def test_a_tiny_frontier_runs_two_configs_at_two_seeds_on_one_ray_start(tmp_path):
    """2 configs × 2 seeds through one ``simulate.run_many``: each run at its own seed, the runs of
    one seed scored on the same rows, and the report's byte ratio split from the real ledgers."""
    from fedkron.sim import simulate
    from fedkron.sim.compare import parse_runs
    from fedkron.sim.frontier import run_frontier

    starts = []
    run_many = simulate.run_many

    def counted(cfgs, *args, **kwargs):
        starts.append([c.seed for c in cfgs])
        return run_many(cfgs, *args, **kwargs)

    simulate.run_many = counted
    try:
        run_frontier(
            RunConfig(**{**TINY, "rounds": 1, "clients": 2}),
            parse_runs("kron-lora:nf4:r2,lora:fp32:r8"),
            [0, 1],
            tmp_path,
        )
    finally:
        simulate.run_many = run_many
    assert starts == [[0, 0, 1, 1]]  # one Ray start for all four runs
    for seed in (0, 1):
        summaries = [
            json.loads((tmp_path / f"seed{seed}" / f / "summary.json").read_text())
            for f in ("kron-lora-nf4-r2", "lora-fp32-r8")
        ]
        assert all(s["status"] == "completed" for s in summaries)
        assert (
            summaries[0]["eval_note"] == summaries[1]["eval_note"]
            and summaries[0]["majority_baseline"] == summaries[1]["majority_baseline"]
        )
        assert json.loads((tmp_path / f"seed{seed}" / "lora-fp32-r8" / "config.json").read_text())["seed"] == seed
    result = json.loads((tmp_path / "frontier.json").read_text())
    kron = next(c for c in result["configs"] if c["config"] == "kron-lora-nf4-r2")
    assert kron["n"] == 2 and kron["values_per_client_round"] == 2 * kron["values_sent"]  # all of it, both ways
    vs = kron["vs_reference"]
    assert vs["pairs"] == 2 and vs["rounds"] == 1.0
    assert vs["codec"] * vs["adapter"] * vs["rounds"] == pytest.approx(vs["bytes_ratio"], rel=1e-12)
