"""Malicious ClientApps on Flower's simulation engine (Ray): no single client stops or steers a run.

Simulation A: one client sends a NaN partition id, one an array header that claims 10^12 values,
one answers the partition query without its info record (the server queries every node here, as
in deployment): the run completes without them.
Simulation B, a clean run and an attacked run side by side: one client claims 10^9 examples, one
sends a well-formed update of norm ~10^32: the attacked global adapter stays close to the clean one.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedkron.runconfig.fields import RunConfig
from fedkron.server.ledger import Ledger

pytestmark = pytest.mark.slow
BASE = dict(
    model="tiny-bert",
    task="sst2",
    clients=4,
    rounds=2,
    local_steps=3,
    batch_size=8,
    max_length=24,
    eval_samples=32,
    lr=5e-3,
)


def _simulate(client_app, cfgs):
    from fedkron.sim.simulate import prepared, run_many

    prepared_cfgs = {name: prepared(cfg) for name, cfg in cfgs.items()}
    return dict(
        zip(prepared_cfgs, run_many(list(prepared_cfgs.values()), client_app=client_app, query_partitions=True))
    )


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_bad_fields_and_headers_reject_one_reply_and_the_run_goes_on(tmp_path):
    from fedkron.sim.faults import make_faulty_app

    app = make_faulty_app({1: "nan-partition", 2: "huge-header", 3: "no-info"})
    cfg = RunConfig(**BASE, out=str(tmp_path / "a")).resolved()
    outcome = _simulate(app, {"a": cfg})
    assert outcome["a"]["status"] == "completed", outcome["a"]["status"]
    rows = _rows(tmp_path / "a")[1:]
    assert [(r["accepted"], r["rejected"]) for r in rows] == [(1, 2), (1, 2)]  # node 3 never joined
    ledger = Ledger.read_csv(tmp_path / "a" / "ledger.csv")
    rejected = sorted(r.partition_id for r in ledger.rows if r.status == "rejected")
    assert rejected == [1, 1, 2, 2]
    assert not any(r.kind == "train" and r.partition_id == 3 for r in ledger.rows)


def test_one_client_cannot_steer_the_global_adapter(tmp_path):
    from fedkron.sim.faults import make_faulty_app

    app = make_faulty_app({1: "claim-examples", 2: "overflow"}, only_in="attack")
    cfgs = {n: RunConfig(**BASE, out=str(tmp_path / n)).resolved() for n in ("clean", "attack")}
    outcome = _simulate(app, cfgs)
    assert outcome["attack"]["status"] == outcome["clean"]["status"] == "completed"
    rows = _rows(tmp_path / "attack")[1:]
    assert [(r["accepted"], r["rejected"]) for r in rows] == [(3, 1), (3, 1)]  # the overflow, by the norm bound
    clean = load_file(str(tmp_path / "clean" / "adapter" / "adapter_model.safetensors"))
    attack = load_file(str(tmp_path / "attack" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in attack.values())
    moved = sum(float((attack[k] - clean[k]).norm()) for k in clean)
    scale = sum(float(clean[k].norm()) for k in clean)
    assert moved < 0.25 * scale  # three of four clients' honest work, weighted by what they hold
    assert abs(rows[-1]["accuracy"] - _rows(tmp_path / "clean")[-1]["accuracy"]) <= 0.15


def test_one_huge_reply_of_two_neither_wrecks_nor_stops_the_run(tmp_path):
    """Two replies a round, no history: the ×1e30 update is rejected (it once passed and then
    made every client train on NaN), and its claimed evaluation weight is capped."""
    from fedkron.sim.faults import make_faulty_app

    app = make_faulty_app({1: "scale-1e30", 3: "claim-eval"})
    base = dict(BASE, fraction=0.5, fraction_evaluate=1.0, eval_samples=8)
    cfg = RunConfig(**base, out=str(tmp_path / "two")).resolved()
    outcome = _simulate(app, {"two": cfg})
    assert outcome["two"]["status"] == "completed", outcome["two"]["status"]
    rows = _rows(tmp_path / "two")[1:]
    assert sum(r["rejected"] for r in rows) >= 1 and all(r["accepted"] >= 1 for r in rows)
    adapter = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.isfinite(v).all() and v.abs().max() < 100 for v in adapter.values())
    assert all(r["fed_examples"] <= 4 * 8 and r["fed_accuracy"] < 0.9 for r in rows)  # 4 clients × 8 rows at most
