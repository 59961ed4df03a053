"""Local training: the logit-adjusted loss that keeps label-skewed clients' heads balanced."""

from __future__ import annotations

import math

import pytest
import torch

from fedkron.config import RunConfig
from fedkron.task import build_model, label_log_prior, train_local


def _skewed_client(n: int = 64, positives: int = 60, length: int = 12):
    """One token row repeated, 94 % labelled positive: a client under heavy label skew whose
    inputs carry no signal, so all a model can learn is a constant, the label prior or not."""
    labels = torch.zeros(n, dtype=torch.long)
    labels[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:positives]] = 1
    row = torch.randint(1000, 5000, (1, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": row.repeat(n, 1), "attention_mask": torch.ones(n, length, dtype=torch.long),
            "labels": labels}


@pytest.fixture(scope="module")
def cfg():
    return RunConfig(model="tiny-bert", task="sst2", method="lora", clients=1, rounds=1, local_steps=1,
                     max_length=16)


def test_label_log_prior_is_add_one_smoothed_per_class(cfg):
    model = build_model(cfg, 3)
    data = {"input_ids": torch.zeros(5, 4, dtype=torch.long), "labels": torch.tensor([0, 0, 0, 2, 2])}
    prior = label_log_prior(data, model).exp()
    assert torch.allclose(prior, torch.tensor([4 / 8, 1 / 8, 3 / 8]))  # class 1 unseen, still > 0
    choice = {"input_ids": torch.zeros(4, 4, 7, dtype=torch.long), "labels": torch.tensor([3, 3, 1, 3])}
    assert torch.allclose(label_log_prior(choice, model).exp(), torch.tensor([1, 2, 1, 4]) / 8.0)


def _positive_share(model, data) -> float:
    with torch.no_grad():
        logits = model(input_ids=data["input_ids"], attention_mask=data["attention_mask"]).logits
    return float(logits.softmax(-1)[:, 1].mean())


def test_logit_adjusted_client_fits_the_balanced_head_and_plain_ce_fits_its_prior(cfg):
    data = _skewed_client()
    shares = {}
    for loss in ("ce", "logit-adjusted"):
        model = build_model(cfg, 2).eval()
        before = _positive_share(model, data)
        result = train_local(model, data, steps=30, batch_size=16, lr=5e-3, seed=1, local_loss=loss)
        assert math.isfinite(result.loss) and result.steps == 30
        shares[loss] = _positive_share(model, data)
    assert abs(before - 0.5) < 0.15
    assert shares["ce"] > 0.8  # plain CE learns the 94 % prior
    # the adjusted loss's optimum is balanced up to the add-one smoothing: 0.9375/0.0625 vs 61/5
    assert abs(shares["logit-adjusted"] - 0.55) < 0.1
