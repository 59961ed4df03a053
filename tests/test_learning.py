"""A federated run learns: pretrained MiniLM-L6 with Kron-LoRA on the embedded SST-2, seeded, moves
held-out accuracy well above the majority class through Flower's engine on Ray, with nf4 both ways."""

from __future__ import annotations

import json

import pytest

from fedkron.runconfig import RunConfig
from fedkron.sim.simulate import run_sim

pytestmark = pytest.mark.slow  # a real pretrained model on Ray: about a minute on 2 cores


def test_kron_lora_learns_sst2_above_the_majority_class(tmp_path):
    cfg = RunConfig(
        model="minilm-l6",
        task="sst2",
        clients=2,
        rounds=2,
        local_steps=15,
        eval_samples=256,
        seed=0,
        out=str(tmp_path / "run"),
    )
    summary = run_sim(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    majority, before, after = summary["majority_baseline"], rows[0]["accuracy"], summary["final_accuracy"]
    assert summary["status"] == "completed" and summary["bytes_up"] > 0 and summary["bytes_down"] > 0
    assert before < majority + 0.05  # round 0: the untrained head is no better than guessing
    assert after >= majority + 0.10, (before, after, majority)  # a margin no seeded fluke reaches
    assert rows[-1]["loss"] < rows[0]["loss"]
