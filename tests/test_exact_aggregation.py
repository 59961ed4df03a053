"""Exact aggregation: averaging B1 (A, B2 frozen) equals averaging the clients' ΔW; so does
alternating aggregation (one factor a round, the others fixed at the global state)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkron.adapters import adapter_factor_roles, adapter_layers, adapter_state_dict, load_adapter_state_dict
from fedkron.client.worker import handle_train, select_trainable
from fedkron.models import build_model
from fedkron.protocol import sent_names
from fedkron.runconfig.fields import RunConfig
from fedkron.strategies.exactness import aggregation_error, dense_delta

METHOD_ROLES = {"kron-lora": ("A", "B1", "B2"), "krona": ("A", "B"), "lora": ("lora_A", "lora_B")}


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


def _one_server_one_client(aggregation, **kw):
    """A FedKron server and a client (partition 0 of 2, one Flower context kept across rounds)
    that answers its broadcasts with ``handle_train``."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from fedkron.strategies.registry import build_strategy
    from fedkron.strategies.wrapper import FedKron

    base = dict(model="tiny-bert", task="boolq", clients=2, rounds=1, local_steps=2, batch_size=4, max_length=16)
    cfg = RunConfig(**base, aggregation=aggregation, **{"error_feedback": False, **kw}).resolved()
    server_model = build_model(cfg, num_labels=2)
    state = adapter_state_dict(server_model)
    roles = adapter_factor_roles(server_model)
    strategy = FedKron(build_strategy(cfg), cfg, state, roles)
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(), run_config={}
    )

    def answer(content):
        return handle_train(Message(content, dst_node_id=1, message_type="train"), context)

    return cfg, state, roles, strategy, answer, lambda rnd=1: strategy._broadcast(rnd, ConfigRecord()), context


@pytest.fixture
def exact_round(flower_identity):
    """The server's round-1 broadcast in exact mode and what a client needs to answer it."""
    return _one_server_one_client("exact")[:6]


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


def _factor_shapes(method, p, q, r, s, rank):
    """Factor shapes of one layer of ``method`` (ΔW of shape (p·r, q·s), or (p, q) for LoRA)."""
    if method == "kron-lora":
        return {"A": (p, q), "B1": (r, rank), "B2": (rank, s)}
    if method == "krona":
        return {"A": (p, q), "B": (r, s)}
    return {"lora_A": (rank, q), "lora_B": (p, rank)}


@settings(max_examples=25, deadline=None)
@given(
    method=st.sampled_from(sorted(METHOD_ROLES)),
    dims=st.lists(st.integers(1, 5), min_size=5, max_size=5),
    server_round=st.integers(1, 6),
    weights=st.lists(st.integers(1, 50), min_size=2, max_size=4),
    seed=st.integers(0, 10_000),
)
def test_alternating_mode_mean_of_the_rounds_factor_is_mean_of_delta_w(method, dims, server_round, weights, seed):
    """Any shapes, any round: clients that change only the round's factor (from a global state where
    every factor is non-zero) average to the mean of their dense ΔW."""
    g = torch.Generator().manual_seed(seed)
    shapes = _factor_shapes(method, *dims)
    roles = {f"{layer}.{role}": role for layer in ("q", "v") for role in shapes} | {"head.weight": "full"}
    global_state = {n: torch.randn(shapes.get(r, (3,)), generator=g) for n, r in roles.items()}
    sent = sent_names(roles, "alternating", server_round)
    updates = [{n: 0.1 * torch.randn(global_state[n].shape, generator=g) for n in sent} for _ in weights]
    total = sum(weights)
    for layer in ("q", "v"):
        names = {r: f"{layer}.{r}" for r in shapes}
        locals_ = [{r: (global_state[n] + u.get(n, 0)).double() for r, n in names.items()} for u in updates]
        mean_factors = {r: sum(f[r] * w for f, w in zip(locals_, weights)) / total for r in names}
        mean_delta = sum(dense_delta(f) * w for f, w in zip(locals_, weights)) / total
        torch.testing.assert_close(dense_delta(mean_factors), mean_delta, rtol=1e-9, atol=1e-12)
    assert aggregation_error(global_state, updates, weights, roles) < 1e-6
    every = [{n: 0.1 * torch.randn(global_state[n].shape, generator=g) for n in roles} for _ in weights]
    assert aggregation_error(global_state, every, weights, roles) > 1e-6  # all factors at once: not exact


@pytest.mark.parametrize("method", sorted(METHOD_ROLES))
def test_alternating_mode_starts_with_the_zero_initialised_factor_and_trains_one_a_round(method):
    cfg = RunConfig(model="tiny-bert", task="sst2", method=method, aggregation="alternating", max_length=16)
    m = build_model(cfg, num_labels=2)
    roles, state = adapter_factor_roles(m), adapter_state_dict(m)
    cycle = len(METHOD_ROLES[method])
    for rnd in range(1, cycle + 2):
        names = select_trainable(m, cfg, rnd)
        trained = {roles[n] for n in names} - {"full"}
        assert len(trained) == 1 and "full" in {roles[n] for n in names}
        params = dict(m.named_parameters())
        assert all(params[n].requires_grad == (n in names) for n in roles)
        if rnd == 1:  # the factor the init zeroes: ΔW = 0 at step 0, and the others get its gradient
            assert all(float(state[n].abs().max()) == 0 for n in names if roles[n] != "full")
            assert all(float(v.abs().max()) > 0 for n, v in state.items() if roles[n] not in trained | {"full"})
    assert {roles[n] for r in range(1, cycle + 1) for n in select_trainable(m, cfg, r)} == set(roles.values())


def test_alternating_client_trains_and_sends_the_rounds_factor_and_keeps_the_others_residuals(flower_identity):
    """Round 1 trains B1, round 2 B2 (each with the full head), from the whole broadcast state; the
    uplink error-feedback residual of B1 waits, untouched, while B2 is sent."""
    from fedkron.client import worker
    from fedkron.client.state import EF_KEY
    from fedkron.compression import decode, from_records
    from fedkron.protocol import ARRAYS as ARRAYS_KEY
    from fedkron.protocol import MANIFEST as MANIFEST_KEY

    cfg, state, roles, strategy, answer, broadcast, context = _one_server_one_client(
        "alternating", error_feedback=True, uplink="nf4", downlink="nf4"
    )
    residuals = {}
    for rnd, role in ((1, "B1"), (2, "B2")):
        content = broadcast(rnd)
        down = decode(from_records(content[ARRAYS_KEY], content[MANIFEST_KEY]))
        assert sorted(down) == sorted(roles)  # the downlink carries every factor
        reply = answer(content)
        up = decode(from_records(reply.content[ARRAYS_KEY], reply.content[MANIFEST_KEY]))
        assert sorted(up) == sorted(sent_names(roles, "alternating", rnd))
        assert {roles[n] for n in up} == {role, "full"} and any(float(v.abs().max()) > 0 for v in up.values())
        after = adapter_state_dict(worker.cached_model(cfg)[0])
        for name in roles:  # what did not train is exactly the broadcast state
            if roles[name] not in (role, "full"):
                torch.testing.assert_close(after[name], down[name], rtol=0, atol=0)
        residuals[rnd] = {k: torch.from_numpy(v.numpy().copy()) for k, v in context.state[EF_KEY].items()}
    b1 = [n for n in roles if roles[n] == "B1"]
    assert set(residuals[1]) == set(sent_names(roles, "alternating", 1))
    assert set(residuals[2]) == set(sent_names(roles, "alternating", 1)) | set(sent_names(roles, "alternating", 2))
    assert any(float(residuals[1][n].abs().max()) > 0 for n in b1)
    for name in b1:
        assert torch.equal(residuals[2][name], residuals[1][name])
