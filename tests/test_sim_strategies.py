"""Every Flower strategy fedkron delegates to, on Flower's simulation engine (Ray), two rounds each.

One Ray start serves all of them: the ServerApp runs one federation per strategy on the same Grid,
with the same SuperNodes (clients take every setting from the server's messages), so the test
pays Ray's start-up once.
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
RUNS = {
    "fedavg": {},
    "fedavgm": {"strategy": "fedavgm", "server_lr": 0.8},
    "fedadam": {"strategy": "fedadam", "server_lr": 0.01},
    "fedyogi": {"strategy": "fedyogi", "server_lr": 0.01},
    "fedadagrad": {"strategy": "fedadagrad", "server_lr": 0.01},
    "fedprox": {"strategy": "fedprox", "proximal_mu": 0.5},
    "fedmedian": {"strategy": "fedmedian"},
    "fedtrimmedavg": {"strategy": "fedtrimmedavg", "trim_fraction": 0.25},
    "krum": {"strategy": "krum"},
    "bulyan": {"strategy": "bulyan"},
    "dp-fixed": {"clip_norm": 0.05, "dp_noise": 0.5},
    "dp-adaptive": {"adaptive_clipping": True, "dp_noise": 0.2},
    "federated-eval": {"fraction_evaluate": 1.0, "central_eval": False},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from fedkron.sim.simulate import prepared, run_many

    root = tmp_path_factory.mktemp("strategies")
    cfgs = {name: prepared(RunConfig(**BASE, **kw, out=str(root / name))) for name, kw in RUNS.items()}
    outcome = dict(zip(cfgs, run_many(list(cfgs.values()))))
    return root, cfgs, outcome


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(RUNS))
def test_strategy_runs_two_rounds_on_ray(runs, name):
    root, cfgs, outcome = runs
    assert outcome[name]["status"] == "completed", outcome[name]["status"]
    rows = _rows(root / name)
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["accepted"] == 4 and r["rejected"] == 0 for r in rows[1:])
    ledger = Ledger.read_csv(root / name / "ledger.csv")
    assert ledger.count("up") == 8 and ledger.count("down") == 8
    initial = load_file(str(root / "fedavg" / "adapter" / "adapter_model.safetensors"))
    final = load_file(str(root / name / "adapter" / "adapter_model.safetensors"))
    assert set(final) == set(initial)
    assert all(torch.isfinite(v).all() for v in final.values())


def test_strategies_aggregate_differently(runs):
    """Each strategy is really in charge: the same clients' updates give different global adapters."""
    root, _, _ = runs
    finals = {
        n: load_file(str(root / n / "adapter" / "adapter_model.safetensors"))
        for n in ("fedavg", "fedavgm", "fedadam", "fedmedian", "krum", "dp-fixed")
    }
    names = list(finals)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert any(not torch.allclose(finals[a][k], finals[b][k]) for k in finals[a]), (a, b)


def test_dp_rounds_report_noise_clipping_and_epsilon(runs):
    root, _, _ = runs
    fixed = _rows(root / "dp-fixed")[1:]
    assert all(r["dp_clipping_norm"] == 0.05 and r["dp_noise_stdev"] == pytest.approx(0.5 * 0.05 / 4) for r in fixed)
    assert 0 < fixed[0]["dp_epsilon"] < fixed[1]["dp_epsilon"]  # privacy spent grows with each release
    adaptive = _rows(root / "dp-adaptive")[1:]
    assert all(r["dp_clipping_norm"] > 0 and r["dp_noise_stdev"] > 0 for r in adaptive)
    assert adaptive[0]["dp_clipping_norm"] != adaptive[1]["dp_clipping_norm"]  # the norm adapts


def test_federated_evaluation_reports_the_clients_accuracy_without_server_data(runs):
    root, _, _ = runs
    rows = _rows(root / "federated-eval")
    assert all(r["accuracy"] is None for r in rows)  # the server scored nothing itself
    assert all(0.0 <= r["fed_accuracy"] <= 1.0 and r["fed_examples"] == 4 * 32 for r in rows[1:])
    assert all(r["train_loss"] > 0 for r in rows[1:])
    ledger = Ledger.read_csv(root / "federated-eval" / "ledger.csv")
    assert sum(1 for r in ledger.rows if r.kind == "evaluate" and r.direction == "down") == 8
    summary = json.loads((root / "federated-eval" / "summary.json").read_text())
    assert summary["final_fed_accuracy"] == rows[-1]["fed_accuracy"]
