"""Local training: the logit-adjusted loss that keeps label-skewed clients' heads balanced."""

from __future__ import annotations

import math

import pytest
import torch

from fedkron.models import build_model
from fedkron.runconfig.fields import RunConfig
from fedkron.training.local import label_log_prior, train_local


def _skewed_client(n: int = 64, positives: int = 60, length: int = 12):
    """One token row repeated, 94 % labelled positive: a client under heavy label skew whose
    inputs carry no signal, so all a model can learn is a constant, the label prior or not."""
    labels = torch.zeros(n, dtype=torch.long)
    labels[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:positives]] = 1
    row = torch.randint(1000, 5000, (1, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": row.repeat(n, 1), "attention_mask": torch.ones(n, length, dtype=torch.long), "labels": labels}


@pytest.fixture(scope="module")
def cfg():
    return RunConfig(model="tiny-bert", task="sst2", method="lora", clients=1, rounds=1, local_steps=1, max_length=16)


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


def _update_norm(model, before) -> float:
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    return float(sum((after[n] - before[n]).pow(2).sum() for n in after).sqrt())


def test_sgd_moves_a_fitted_single_class_client_far_less_than_adamw(cfg):
    """Under the logit-adjusted loss a single-class client is already fitted (loss ≈ 0): SGD's step
    follows that tiny gradient, AdamW normalises it and moves every factor by about lr per step."""
    data = _skewed_client(positives=64)  # every row positive
    ratios = {}
    for opt in ("adamw", "sgd"):
        model = build_model(cfg, 2).eval()
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        result = train_local(
            model, data, steps=10, batch_size=16, lr=5e-3, seed=1, local_loss="logit-adjusted", optimizer=opt
        )
        assert result.loss < 0.1  # the adjusted loss is already small: log(65/66)-ish plus noise
        ratios[opt] = _update_norm(model, before)
    assert ratios["sgd"] < 0.05 * ratios["adamw"]
    assert ratios["sgd"] > 0  # it does train


def test_sgd_learns_a_balanced_signal(cfg):
    """SGD is a real optimiser here, not a no-op: on rows whose first token gives the label, the
    loss falls."""
    n, length = 64, 8
    labels = torch.arange(n) % 2
    ids = torch.randint(1000, 5000, (n, length), generator=torch.Generator().manual_seed(3))
    ids[:, 0] = torch.where(labels == 1, 2000, 3000)
    data = {"input_ids": ids, "attention_mask": torch.ones(n, length, dtype=torch.long), "labels": labels}
    model = build_model(cfg, 2).eval()
    first = train_local(model, data, steps=5, batch_size=16, lr=0.1, seed=0, optimizer="sgd").loss
    later = train_local(model, data, steps=40, batch_size=16, lr=0.1, seed=1, optimizer="sgd").loss
    assert later < first - 0.05


def test_unknown_optimizer_is_refused(cfg):
    model = build_model(cfg, 2)
    with pytest.raises(ValueError, match="optimizer must be"):
        train_local(model, _skewed_client(), steps=1, batch_size=8, lr=1e-3, seed=0, optimizer="lion")
    with pytest.raises(Exception, match="local-opt"):
        RunConfig(model="tiny-bert", task="sst2", local_opt="lion").resolved()


def test_gradient_checkpointing_on_an_encoder_trains_exactly_as_without_it(cfg):
    """--gradient-checkpointing reaches encoders too (it was read for language models only): the
    blocks recompute their activations in backward, and the adapters still get the same gradients."""
    import dataclasses

    from fedkron.adapters import adapter_state_dict

    data = _skewed_client(n=16)
    runs = {}
    for checkpointing in (False, True):
        model = build_model(dataclasses.replace(cfg, gradient_checkpointing=checkpointing), 2)
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == checkpointing
        start = {k: v.clone() for k, v in adapter_state_dict(model).items()}
        result = train_local(model, data, steps=2, batch_size=4, lr=1e-2, seed=0)
        after = adapter_state_dict(model)
        assert all(not torch.equal(after[k], start[k]) for k in start if "lora_A" in k)  # every layer trained
        runs[checkpointing] = (result.loss, after)
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5)
    for name, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][name], value)
