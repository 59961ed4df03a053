"""Exact aggregation: averaging B1 (A, B2 frozen) equals averaging the clients' ΔW."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkron.adapters import adapter_factor_roles, adapter_layers, adapter_state_dict, load_adapter_state_dict
from fedkron.client.worker import select_trainable
from fedkron.config import RunConfig
from fedkron.strategies import weighted_mean
from fedkron.strategies.exactness import aggregation_error, exact_names
from fedkron.task import build_model


@pytest.fixture(scope="module")
def model():
    cfg = RunConfig(model="tiny-bert", task="sst2", clients=2, rounds=1, local_steps=1, max_length=16)
    return build_model(cfg, num_labels=2)


def _deltas(model, state):
    load_adapter_state_dict(model, state)
    return {name: layer.delta_weight().detach().double() for name, layer in adapter_layers(model).items()}


def _client_updates(global_state, names, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [{k: 0.05 * torch.randn(global_state[k].shape, generator=g) if k in names else torch.zeros_like(v)
             for k, v in global_state.items()} for _ in range(n)]


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 4), seed=st.integers(0, 10_000), weights=st.lists(st.integers(1, 50), min_size=4, max_size=4))
def test_exact_mode_mean_of_factors_is_mean_of_delta_w(model, n, seed, weights):
    roles = adapter_factor_roles(model)
    global_state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    g = torch.Generator().manual_seed(seed + 1)  # a non-zero B1, as after a few rounds
    global_state = {k: v + 0.1 * torch.randn(v.shape, generator=g) if roles[k] == "B1" else v
                    for k, v in global_state.items()}
    updates = _client_updates(global_state, set(exact_names(roles)), n, seed)
    w = weights[:n]
    mean = weighted_mean(updates, w)
    averaged = _deltas(model, {k: global_state[k] + mean[k] for k in global_state})
    per_client = [_deltas(model, {k: global_state[k] + u[k] for k in global_state}) for u in updates]
    for layer in averaged:
        expected = sum(d[layer] * (wi / sum(w)) for d, wi in zip(per_client, w))
        torch.testing.assert_close(averaged[layer], expected, rtol=1e-5, atol=1e-7)
    assert aggregation_error(global_state, updates, w, roles) < 1e-5


def test_per_factor_mode_is_not_exact(model):
    roles = adapter_factor_roles(model)
    global_state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    g = torch.Generator().manual_seed(3)
    global_state = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in global_state.items()}
    updates = _client_updates(global_state, set(roles), 3, seed=4)
    assert aggregation_error(global_state, updates, [1, 1, 1], roles) > 0.05


def test_exact_mode_trains_and_sends_only_b1_and_full_modules(model):
    roles = adapter_factor_roles(model)
    cfg = RunConfig(model="tiny-bert", task="sst2", aggregation="exact")
    names = select_trainable(model, cfg)
    assert names and {roles[n] for n in names} <= {"B1", "full"}
    assert any(roles[n] == "B1" for n in names) and any(roles[n] == "full" for n in names)
    params = dict(model.named_parameters())
    assert all(params[n].requires_grad == (n in names) for n in roles)
    assert len(select_trainable(model, RunConfig(model="tiny-bert", task="sst2"))) == len(roles)
    assert all(params[n].requires_grad for n in roles)
