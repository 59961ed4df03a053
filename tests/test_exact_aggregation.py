"""Exact aggregation: averaging B1 (A, B2 frozen) equals averaging the clients' ΔW."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkron.adapters import adapter_factor_roles, adapter_layers, adapter_state_dict, load_adapter_state_dict
from fedkron.client.worker import handle_train, select_trainable
from fedkron.models import build_model
from fedkron.protocol import sent_names
from fedkron.runconfig.fields import RunConfig
from fedkron.strategies.exactness import aggregation_error


def exact_names(roles):
    return sent_names(roles, "exact")


def weighted_mean(updates, weights):
    return {k: sum(u[k].double() * w for u, w in zip(updates, weights)) / sum(weights) for k in updates[0]}


@pytest.fixture(scope="module")
def model():
    cfg = RunConfig(model="tiny-bert", task="sst2", clients=2, rounds=1, local_steps=1, max_length=16)
    return build_model(cfg, num_labels=2)


def _deltas(model, state):
    load_adapter_state_dict(model, state)
    return {name: layer.delta_weight().detach().double() for name, layer in adapter_layers(model).items()}


def _client_updates(global_state, names, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            k: 0.05 * torch.randn(global_state[k].shape, generator=g) if k in names else torch.zeros_like(v)
            for k, v in global_state.items()
        }
        for _ in range(n)
    ]


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 4), seed=st.integers(0, 10_000), weights=st.lists(st.integers(1, 50), min_size=4, max_size=4))
def test_exact_mode_mean_of_factors_is_mean_of_delta_w(model, n, seed, weights):
    roles = adapter_factor_roles(model)
    global_state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    g = torch.Generator().manual_seed(seed + 1)  # a non-zero B1, as after a few rounds
    global_state = {
        k: v + 0.1 * torch.randn(v.shape, generator=g) if roles[k] == "B1" else v for k, v in global_state.items()
    }
    updates = _client_updates(global_state, set(exact_names(roles)), n, seed)
    w = weights[:n]
    mean = weighted_mean(updates, w)
    averaged = _deltas(model, {k: global_state[k] + mean[k].float() for k in global_state})
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


def test_ffa_lora_and_exact_krona_are_exact_too():
    """Exact mode for LoRA (FFA-LoRA: A frozen) and KronA (A frozen): ΔW is linear in B."""
    for method in ("lora", "krona"):
        cfg = RunConfig(
            model="tiny-bert", task="sst2", method=method, clients=2, rounds=1, local_steps=1, max_length=16
        )
        m = build_model(cfg, num_labels=2)
        roles = adapter_factor_roles(m)
        state = {k: v.clone() for k, v in adapter_state_dict(m).items()}
        g = torch.Generator().manual_seed(2)
        state = {
            k: v + 0.1 * torch.randn(v.shape, generator=g) if roles[k] in ("B", "lora_B") else v
            for k, v in state.items()
        }
        updates = _client_updates(state, set(exact_names(roles)), 3, seed=5)
        assert {roles[n] for n in exact_names(roles)} == {"full", "B" if method == "krona" else "lora_B"}
        assert aggregation_error(state, updates, [1, 2, 3], roles) < 1e-5
        assert aggregation_error(state, _client_updates(state, set(roles), 3, seed=5), [1, 2, 3], roles) > 1e-3


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


@pytest.fixture
def exact_round(flower_identity):
    """The server's round-1 broadcast in exact mode and what a client needs to answer it."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fedkron.strategies.registry import build_strategy
    from fedkron.strategies.wrapper import FedKron

    cfg = RunConfig(
        model="tiny-bert",
        task="boolq",
        clients=2,
        rounds=1,
        local_steps=2,
        batch_size=4,
        max_length=16,
        aggregation="exact",
        error_feedback=False,
    ).resolved()
    server_model = build_model(cfg, num_labels=2)
    state = adapter_state_dict(server_model)
    roles = adapter_factor_roles(server_model)
    strategy = FedKron(build_strategy(cfg), cfg, state, roles)

    def answer(content):
        context = Context(
            run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(), run_config={}
        )
        return handle_train(Message(content, dst_node_id=1, message_type="train"), context)

    return cfg, state, roles, strategy, answer, lambda: strategy._broadcast(1, ConfigRecord())


def test_exact_mode_broadcasts_only_b1_and_full_modules_and_clients_rebuild_the_rest(exact_round):
    from fedkron.client import worker
    from fedkron.compression import decode, from_records
    from fedkron.protocol import ARRAYS as ARRAYS_KEY
    from fedkron.protocol import MANIFEST as MANIFEST_KEY

    cfg, state, roles, strategy, answer, broadcast = exact_round
    content = broadcast()
    sent = decode(from_records(content[ARRAYS_KEY], content[MANIFEST_KEY]))
    assert sorted(sent) == sorted(exact_names(roles))
    assert sum(v.numel() for v in sent.values()) < sum(v.numel() for v in state.values())  # A, B2 stay home

    # A client process whose cached model was trained per-factor before (A, B2 moved) still
    # trains from the seeded A, B2 the server holds: they come from its seeded build, not its model.
    model, _ = worker.cached_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if roles.get(name) in ("A", "B2"):
                p.add_(1.0)
    reply = answer(content)
    after = adapter_state_dict(model)
    for name, role in roles.items():
        if role in ("A", "B2"):
            torch.testing.assert_close(after[name], state[name])
    update = decode(from_records(reply.content[ARRAYS_KEY], reply.content[MANIFEST_KEY]))
    assert sorted(update) == sorted(exact_names(roles))
    assert any(float(v.abs().max()) > 0 for v in update.values())


def test_exact_mode_client_refuses_a_server_with_other_frozen_factors(exact_round):
    from fedkron.protocol import CONFIG as CONFIG_KEY
    from fedkron.protocol import FROZEN_DIGEST as FROZEN_DIGEST_KEY

    cfg, state, roles, strategy, answer, broadcast = exact_round
    content = broadcast()
    content[CONFIG_KEY][FROZEN_DIGEST_KEY] = "0" * 16  # e.g. a server built with another seed
    with pytest.raises(ValueError, match="differ from the server's"):
        answer(content)
