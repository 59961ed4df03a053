"""Real Flower simulations on Ray: tiny random BERT for mechanics, pretrained MiniLM for learning."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from fedkron.adapters import adapter_state_dict
from fedkron.config import RunConfig
from fedkron.strategies import Ledger
from fedkron.task import build_model

pytestmark = pytest.mark.slow

TINY = dict(model="tiny-bert", task="boolq", clients=3, rounds=2, local_steps=3, batch_size=8,
            max_length=32, eval_samples=48, lr=5e-3)


def _payload_per_message(ledger: Ledger) -> float:
    ups = [r for r in ledger.rows if r.direction == "up" and r.kind == "train" and r.status == "ok"]
    return sum(r.payload for r in ups) / len(ups)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real simulations, nf4 (with one client sending a corrupted payload) and fp32."""
    from fedkron.client.faulty import make_faulty_app
    from fedkron.sim.simulate import run_sim

    out = {}
    root = tmp_path_factory.mktemp("sim")
    caplog_records = []
    handler = logging.Handler()
    handler.emit = caplog_records.append
    logging.getLogger("fedkron").addHandler(handler)
    try:
        cfg4 = RunConfig(**TINY, quant="nf4", out=str(root / "nf4"))
        out["nf4"] = run_sim(cfg4, client_app=make_faulty_app("nan-scales", (0,)))
        cfg32 = RunConfig(**TINY, quant="fp32", out=str(root / "fp32"))
        out["fp32"] = run_sim(cfg32)
    finally:
        logging.getLogger("fedkron").removeHandler(handler)
    out["logs"] = [r.getMessage() for r in caplog_records]
    out["root"] = root
    return out


def test_results_folder_is_complete(runs):
    folder = runs["root"] / "nf4"
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
    final = load_file(str(runs["root"] / "nf4" / "adapter" / "adapter_model.safetensors"))
    assert set(final) == set(initial)
    changed = [k for k in initial if not torch.allclose(initial[k], final[k])]
    assert len(changed) > len(initial) // 2


def test_nf4_uplink_is_about_an_eighth_of_fp32(runs):
    nf4 = Ledger.read_csv(runs["root"] / "nf4" / "ledger.csv")
    fp32 = Ledger.read_csv(runs["root"] / "fp32" / "ledger.csv")
    ratio = _payload_per_message(nf4) / _payload_per_message(fp32)
    assert 0.11 < ratio < 0.16, ratio  # 4 bits + a float32 scale per 64 values ≈ 4.5/32


def test_corrupted_reply_is_dropped_and_logged(runs):
    nf4 = Ledger.read_csv(runs["root"] / "nf4" / "ledger.csv")
    rejected = [r for r in nf4.rows if r.status == "rejected"]
    assert [r.partition_id for r in rejected] == [0, 0]  # partition 0, both rounds
    rows = [json.loads(line) for line in (runs["root"] / "nf4" / "metrics.jsonl").read_text().splitlines()]
    assert [r["rejected"] for r in rows[1:]] == [1, 1] and [r["accepted"] for r in rows[1:]] == [2, 2]
    assert sum("rejected reply" in m and "(partition 0)" in m for m in runs["logs"]) == 2
    clean = [json.loads(line) for line in (runs["root"] / "fp32" / "metrics.jsonl").read_text().splitlines()]
    assert [r["rejected"] for r in clean[1:]] == [0, 0]
