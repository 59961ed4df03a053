"""The FedKron wrapper over Flower's own strategies, driven in-process (LoopbackGrid, no Ray).

Clients here reply with known updates (fp32, so nothing is lost on the wire), so each aggregate
can be compared with a hand computation of what the Flower strategy is documented to do.
"""

import math

import numpy as np
import pytest
import torch
from flwr.app import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback import LoopbackGrid

from fedkron.compression import get_codec
from fedkron.protocol import make_reply, read_broadcast
from fedkron.runconfig.fields import RunConfig
from fedkron.server.ledger import Ledger, LedgerGrid
from fedkron.server.rounds import run_rounds
from fedkron.sim.faults import corrupt
from fedkron.strategies.registry import build_strategy
from fedkron.strategies.wrapper import FedKron, from_arrayrecord, to_arrayrecord

ROLES = {"l.A": "A", "l.B1": "B1", "l.B2": "B2", "head.weight": "full"}
SHAPES = {"l.A": (2, 2), "l.B1": (3, 2), "l.B2": (2, 3), "head.weight": (4,)}
DEFAULTS = RunConfig().to_record()


def _initial(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}


def _updates(n, seed, names=tuple(SHAPES)):
    g = torch.Generator().manual_seed(seed)
    return [{k: 0.1 * torch.randn(SHAPES[k], generator=g) for k in names} for _ in range(n)]


def _cfg(**kw):
    base = dict(
        model="tiny-bert",
        task="sst2",
        clients=4,
        rounds=2,
        local_steps=1,
        uplink="fp32",
        downlink="fp32",
        aggregation="per-factor",
        lr=2e-3,
        error_feedback=False,
        max_length=16,
    )
    return RunConfig(**{**base, **kw}).resolved()


class Clients:
    """Partition p replies update ``per_round[round][p]`` with ``examples[p]`` examples."""

    def __init__(self, per_round, examples, faults=None):
        self.per_round, self.examples, self.faults = per_round, examples, faults or {}
        self.seen: list[dict] = []

    def __call__(self, msg: Message, context) -> Message:
        pid = int(context.node_config["partition-id"])
        if msg.metadata.message_type == "query":
            from fedkron.protocol import make_info

            return Message(make_info(pid, int(context.node_config["num-partitions"])), reply_to=msg)
        b = read_broadcast(msg.content, DEFAULTS)
        self.seen.append({"round": b.server_round, "pid": pid, "state": b.state})
        update = self.per_round[b.server_round][pid]
        reply = Message(
            make_reply(
                get_codec("fp32").encode(update),
                {"num-examples": self.examples[pid], "train-loss": 0.1 * (pid + 1), "partition-id": pid},
            ),
            reply_to=msg,
        )
        fault = self.faults.get(pid)
        if fault == "raise":
            raise RuntimeError("injected")
        return corrupt(reply, fault) if fault else reply


def _run(cfg, clients, initial=None, rounds=None, ledger=None, sizes="known"):
    """Run the wrapper over ``clients``; by default the server knows each partition's true size."""
    initial = initial or _initial()
    ledger = ledger if ledger is not None else Ledger()
    sizes = dict(enumerate(clients.examples)) if sizes == "known" else sizes
    strategy = FedKron(build_strategy(cfg), cfg, initial, ROLES, ledger=ledger, partition_sizes=sizes)
    grid = LedgerGrid(
        LoopbackGrid(cfg.clients, clients), ledger, partition_of=lambda n: strategy.roster.partition_of.get(n, -1)
    )
    result = run_rounds(strategy, grid, to_arrayrecord(initial), 1, rounds or cfg.rounds, lambda r, a: None, timeout=60)
    return strategy, from_arrayrecord(result.arrays), ledger


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), examples=st.lists(st.integers(1, 500), min_size=4, max_size=4))
def test_fedavg_adds_the_example_weighted_mean_update(flower_identity, seed, examples):
    ups = {1: _updates(4, seed)}
    _, final, _ = _run(_cfg(rounds=1), Clients(ups, examples))
    initial = _initial()
    for k in SHAPES:
        mean = sum(u[k].double() * w for u, w in zip(ups[1], examples)) / sum(examples)
        torch.testing.assert_close(final[k], (initial[k].double() + mean).float(), rtol=1e-6, atol=1e-7)


def test_clients_start_each_round_from_the_new_global_state(flower_identity):
    ups = {1: _updates(4, 1), 2: _updates(4, 2)}
    clients = Clients(ups, [1, 1, 1, 1])
    _, final, _ = _run(_cfg(), clients)
    after_one = {k: _initial()[k] + sum(u[k] for u in ups[1]) / 4 for k in SHAPES}
    for seen in clients.seen:
        expected = _initial() if seen["round"] == 1 else after_one
        for k in SHAPES:
            torch.testing.assert_close(seen["state"][k], expected[k], rtol=1e-6, atol=1e-6)


def test_fedmedian_and_trimmed_mean_are_flowers(flower_identity):
    ups = {1: _updates(4, 5)}
    ups[1][3] = {k: torch.full(SHAPES[k], 50.0) for k in SHAPES}  # an attacker
    initial = _initial()
    off = dict(norm_bound_factor=0)  # let the attacker through: the robust aggregator has to cope
    _, med, _ = _run(_cfg(rounds=1, strategy="fedmedian", **off), Clients(ups, [1, 9, 1, 1]))
    _, trim, _ = _run(_cfg(rounds=1, strategy="fedtrimmedavg", trim_fraction=0.25, **off), Clients(ups, [1, 9, 1, 1]))
    for k in SHAPES:
        local = np.stack([(initial[k] + u[k]).double().numpy() for u in ups[1]])
        np.testing.assert_allclose(med[k].numpy(), np.median(local, axis=0), rtol=1e-6, atol=1e-6)
        ordered = np.sort(local, axis=0)[1:3]  # beta 0.25 of 4 cuts one at each end, unweighted
        np.testing.assert_allclose(trim[k].numpy(), ordered.mean(axis=0), rtol=1e-6, atol=1e-6)
        assert float(med[k].abs().max()) < 10 and float(trim[k].abs().max()) < 10


def test_fedavgm_applies_server_momentum_across_rounds(flower_identity):
    ups = {1: _updates(4, 1), 2: _updates(4, 2)}
    _, final, _ = _run(_cfg(strategy="fedavgm", server_lr=0.5, server_momentum=0.9), Clients(ups, [1, 1, 1, 1]))
    for k in SHAPES:
        d1 = sum(u[k].double() for u in ups[1]) / 4
        d2 = sum(u[k].double() for u in ups[2]) / 4
        w1 = _initial()[k].double() + 0.5 * d1  # momentum v1 = d1
        expected = w1 + 0.5 * (0.9 * d1 + d2)  # v2 = 0.9 v1 + d2
        torch.testing.assert_close(final[k], expected.float(), rtol=1e-5, atol=1e-6)


def test_krum_keeps_an_honest_update_when_one_client_attacks(flower_identity):
    ups = {1: _updates(5, 3)}
    ups[1][4] = {k: 100 * v for k, v in ups[1][4].items()}
    _, final, _ = _run(_cfg(clients=5, rounds=1, strategy="krum", num_malicious=1), Clients(ups, [1] * 5))
    deltas = {k: final[k] - _initial()[k] for k in SHAPES}
    flat = torch.cat([deltas[k].flatten() for k in SHAPES])
    honest = [torch.cat([u[k].flatten() for k in SHAPES]) for u in ups[1][:4]]
    assert min(float((flat - h).norm()) for h in honest) < 1e-5  # Krum picks one client's update as is


def test_fedprox_sends_its_proximal_term_to_the_clients(flower_identity):
    clients = Clients({1: _updates(4, 1)}, [1] * 4)
    strategy, _, ledger = _run(_cfg(rounds=1, strategy="fedprox", proximal_mu=0.3), clients)
    sent = [r for r in ledger.rows if r.kind == "train" and r.direction == "down"]
    assert len(sent) == 4
    cfg = RunConfig(
        **{k.replace("-", "_"): v for k, v in read_broadcast(_broadcast_of(strategy), DEFAULTS).config.items()}
    )
    assert cfg.proximal_mu == 0.3 and cfg.strategy == "fedprox"


def _broadcast_of(strategy):
    from flwr.app import ConfigRecord

    return strategy._broadcast(1, ConfigRecord({"proximal-mu": 0.3}))


def test_server_side_fixed_clipping_bounds_each_update(flower_identity):
    ups = {1: _updates(4, 7)}
    ups[1][0] = {k: 30 * v for k, v in ups[1][0].items()}
    clip = 0.2
    strategy, final, _ = _run(_cfg(rounds=1, clip_norm=clip, norm_bound_factor=0), Clients(ups, [1, 1, 1, 1]))
    clipped = []
    for u in ups[1]:
        norm = math.sqrt(sum(float(v.double().pow(2).sum()) for v in u.values()))
        clipped.append({k: v.double() * min(1.0, clip / norm) for k, v in u.items()})
    for k in SHAPES:
        expected = _initial()[k].double() + sum(c[k] for c in clipped) / 4
        torch.testing.assert_close(final[k], expected.float(), rtol=1e-5, atol=1e-6)
    assert strategy.round_stats[1]["dp_clipping_norm"] == clip and strategy.round_stats[1]["dp_noise_stdev"] == 0


def test_central_dp_noise_has_the_documented_scale_and_is_accounted(flower_identity):
    pytest.importorskip("dp_accounting")
    tiny = {1: [{k: 1e-9 * v for k, v in u.items()} for u in _updates(4, 2)]}  # the noise is what moves
    sigma, clip = 2.0, 0.5
    strategy, final, _ = _run(_cfg(rounds=1, clip_norm=clip, dp_noise=sigma, clients=4), Clients(tiny, [3, 5, 7, 9]))
    noise = torch.cat([(final[k] - _initial()[k]).flatten() for k in SHAPES])
    expected = sigma * clip / 4
    assert strategy.round_stats[1]["dp_noise_stdev"] == pytest.approx(expected)
    assert 0.5 * expected < float(noise.std()) < 1.6 * expected  # 20 values: a loose band, fixed seed
    assert strategy.round_stats[1]["dp_epsilon"] > 0


def test_an_all_zero_update_is_left_out_when_flower_clips(flower_identity):
    """Flower's clipping divides by the update's norm: a zero update would stop the run."""
    ups = {1: _updates(4, 1)}
    ups[1][2] = {k: torch.zeros(SHAPES[k]) for k in SHAPES}
    strategy, final, _ = _run(_cfg(rounds=1, clip_norm=10.0), Clients(ups, [1, 1, 1, 1]))
    assert strategy.round_stats[1]["rejected"] == 1 and strategy.round_stats[1]["accepted"] == 3


def test_bad_replies_are_rejected_counted_and_marked_in_the_ledger(flower_identity):
    ups = {1: _updates(4, 1)}
    clients = Clients(ups, [1, 1, 1, 1], faults={0: "truncated", 2: "raise"})
    strategy, final, ledger = _run(_cfg(rounds=1), clients)
    assert {k: strategy.round_stats[1][k] for k in ("accepted", "rejected", "failed")} == {
        "accepted": 2,
        "rejected": 1,
        "failed": 1,
    }
    ups_rows = [r for r in ledger.rows if r.kind == "train" and r.direction == "up"]
    assert sorted((r.partition_id, r.status) for r in ups_rows) == [
        (0, "rejected"),
        (1, "ok"),
        (2, "failed"),
        (3, "ok"),
    ]
    for k in SHAPES:  # the mean of the two valid updates only
        torch.testing.assert_close(final[k], _initial()[k] + (ups[1][1][k] + ups[1][3][k]) / 2, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="only 2 valid replies .* at least 3 needed"):
        _run(_cfg(rounds=1, min_replies=3), Clients(ups, [1, 1, 1, 1], faults={0: "truncated", 2: "raise"}))


def test_a_reply_that_claims_another_partition_is_rejected(flower_identity):
    class Liar(Clients):
        def __call__(self, msg, context):
            reply = super().__call__(msg, context)
            if msg.metadata.message_type == "train" and int(context.node_config["partition-id"]) == 1:
                reply.content["metrics"]["partition-id"] = 2
            return reply

    strategy, _, _ = _run(_cfg(rounds=1), Liar({1: _updates(4, 1)}, [1] * 4))
    assert strategy.round_stats[1]["rejected"] == 1 and strategy.round_stats[1]["accepted"] == 3


@pytest.mark.parametrize(
    "name, kw",
    [
        ("fedavgm", {"server_lr": 0.7}),
        ("fedadam", {}),
        ("fedyogi", {}),
        ("fedadagrad", {}),
        ("fedavg", {"adaptive_clipping": True}),
        ("fedavgm", {"downlink": "nf4"}),
        ("fedavg", {"downlink": "int8"}),
        ("fedavg", {"downlink": "nf4", "error_feedback": True, "aggregation": "alternating"}),
    ],
)
def test_strategy_state_survives_a_checkpoint(flower_identity, name, kw):
    """Three rounds in one go equal two rounds, a save, a fresh strategy loaded, and round three
    (the inner strategy's server state and a quantized broadcast's error feedback included; in
    alternating mode the resumed round 3 expects round 3's factor, A: the clients send only that)."""
    from fedkron.protocol import sent_names

    cfg = _cfg(rounds=3, strategy=name, **kw)
    ups = {r: _updates(4, r, names=sent_names(ROLES, cfg.aggregation, r)) for r in (1, 2, 3)}
    _, straight, _ = _run(cfg, Clients(ups, [1, 2, 3, 4]))

    first, mid, _ = _run(cfg, Clients(ups, [1, 2, 3, 4]), rounds=2)
    tensors, values = first.state_dict()
    fresh = FedKron(build_strategy(cfg), cfg, _initial(), ROLES, partition_sizes=dict(enumerate([1, 2, 3, 4])))
    fresh.load_state_dict(dict(sorted(mid.items())), dict(sorted(tensors.items())), values)  # as safetensors loads
    grid = LoopbackGrid(4, Clients(ups, [1, 2, 3, 4]))
    result = run_rounds(fresh, grid, to_arrayrecord(fresh.global_state), 3, 3, lambda r, a: None, timeout=60)
    resumed = from_arrayrecord(result.arrays)
    for k in SHAPES:
        assert torch.equal(resumed[k], straight[k]), k


@pytest.mark.parametrize("codec", ["nf4", "int8", "fp16"])
def test_a_quantized_broadcast_is_the_global_state_bit_for_bit(flower_identity, codec):
    """What every client decodes is exactly the server's global state, also for a client that sat
    out for rounds; the server's error feedback keeps the broadcasts' running sum on the aggregates'."""
    ups = {r: _updates(4, 20 + r) for r in range(1, 5)}
    clients = Clients(ups, [1, 1, 1, 1])
    cfg = _cfg(rounds=4, downlink=codec, fraction=0.5)
    strategy = FedKron(build_strategy(cfg), cfg, _initial(), ROLES, partition_sizes=dict(enumerate([1, 1, 1, 1])))
    held = {}

    def remember(server_round, arrays):
        held[server_round] = from_arrayrecord(arrays)

    run_rounds(strategy, LoopbackGrid(4, clients), to_arrayrecord(strategy.global_state), 1, 4, remember, timeout=60)
    last_seen = {}
    for seen in clients.seen:
        for k in SHAPES:
            assert torch.equal(seen["state"][k], held[seen["round"] - 1][k]), (codec, seen["round"], k)
        last_seen[seen["pid"]] = seen["round"]
    assert any(r - 1 > 1 for r in last_seen.values())  # someone came back after sitting out
    assert any(not torch.equal(held[0][k], _initial()[k]) for k in SHAPES)  # lossy: the initial state is its decoding


def test_downlink_error_feedback_keeps_the_sum_of_broadcasts_on_the_sum_of_states():
    from fedkron.compression import get_codec
    from fedkron.strategies.downlink import Downlink

    g = torch.Generator().manual_seed(4)
    states = [{"w": torch.randn(300, generator=g)} for _ in range(20)]
    with_ef, without = Downlink(get_codec("nf4"), True), Downlink(get_codec("nf4"), False)
    drift_ef = drift = torch.zeros(300)
    for state in states:
        drift_ef = drift_ef + with_ef.publish(state)["w"] - state["w"]
        drift = drift + without.publish(state)["w"] - state["w"]
    assert float(drift_ef.norm()) < 0.3 * float(drift.norm())  # bounded by one residual, not 20 errors


def test_settings_a_strategy_cannot_work_with_are_refused_before_the_run():
    from fedkron.runconfig.fields import ConfigError

    with pytest.raises(ConfigError, match="bulyan needs at least 4·num-malicious \\+ 3 = 7 clients a round"):
        _cfg(strategy="bulyan", num_malicious=1, clients=6)
    with pytest.raises(ConfigError, match="dp-noise needs a clipping norm"):
        _cfg(dp_noise=1.0)
    with pytest.raises(ConfigError, match="strategy 'fedsgd' is not one of"):
        _cfg(strategy="fedsgd")


def test_a_client_cannot_claim_more_examples_than_it_holds(flower_identity):
    ups = {1: _updates(4, 11)}
    liar = Clients(ups, [10, 10, 10, 10**9])  # partition 3 holds 10 rows, claims a billion
    _, final, _ = _run(_cfg(rounds=1), liar, sizes={0: 10, 1: 10, 2: 10, 3: 10})
    for k in SHAPES:  # equal weights: what the partitions really hold
        torch.testing.assert_close(final[k], _initial()[k] + sum(u[k] for u in ups[1]) / 4, rtol=1e-5, atol=1e-6)
    # where the server cannot check (clients with their own data), no client gets more than the share
    _, final, _ = _run(_cfg(rounds=1, max_weight_share=0.4), liar, sizes=None)
    w = [10, 10, 10, 0.4 * 30 / (1 - 0.4)]  # water-filled: 20 = 0.4 of the new total 50
    for k in SHAPES:
        expected = _initial()[k].double() + sum(u[k].double() * wi for u, wi in zip(ups[1], w)) / sum(w)
        torch.testing.assert_close(final[k], expected.float(), rtol=1e-5, atol=1e-6)


def test_one_huge_well_formed_update_is_rejected_by_the_default_norm_bound(flower_identity):
    ups = {1: _updates(4, 12), 2: _updates(4, 13)}
    ups[2][1] = {k: 3e30 * v for k, v in ups[2][1].items()}
    strategy, final, ledger = _run(_cfg(rounds=2), Clients(ups, [1, 1, 1, 1]))
    assert strategy.round_stats[2]["rejected"] == 1 and strategy.round_stats[2]["accepted"] == 3
    assert all(torch.isfinite(v).all() and v.abs().max() < 10 for v in final.values())
    assert [r.partition_id for r in ledger.rows if r.status == "rejected"] == [1]
    # with the bound off, updates near float32's limit overflow the aggregate: it is refused
    huge = {1: [{k: 3e38 * torch.sign(v) for k, v in u.items()} for u in _updates(4, 14)]}
    cfg = _cfg(rounds=1, norm_bound_factor=0, strategy="fedavgm", server_lr=1.5, server_momentum=0.0)
    strategy, off, _ = _run(cfg, Clients(huge, [1, 1, 1, 1]))
    assert strategy.round_stats[1].get("aggregate_refused")
    for k in SHAPES:
        assert torch.equal(off[k], _initial()[k])


def test_alternating_rounds_are_exact_and_only_the_rounds_factor_goes_up(flower_identity):
    """Rounds 1-4 train B1, B2, A, B1 (with the head): the wrapper's measured aggregation error is ~0
    every round (per-factor's is not), replies carry only the round's factor (a reply with another
    is rejected), and every broadcast, nf4 with error feedback, carries all factors."""
    from collections import Counter

    from fedkron.compression import payload_bytes, to_records
    from fedkron.protocol import sent_names

    sent = {r: sent_names(ROLES, "alternating", r) for r in range(1, 5)}
    assert [sent[r][0] for r in range(1, 5)] == ["l.B1", "l.B2", "l.A", "l.B1"]
    ups = {r: _updates(4, 40 + r, names=sent[r]) for r in range(1, 5)}
    ups[2][3] = _updates(1, 9)[0]  # partition 3 sends every factor in round 2
    cfg = _cfg(rounds=4, aggregation="alternating", downlink="nf4", error_feedback=True)
    clients = Clients(ups, [1, 2, 3, 4])
    strategy, _, ledger = _run(cfg, clients)
    for r in range(1, 5):
        assert strategy.round_stats[r]["aggregation_error"] < 1e-6, r
        assert strategy.round_stats[r]["rejected"] == (r == 2)
    assert all(sorted(seen["state"]) == sorted(SHAPES) for seen in clients.seen)
    train = [x for x in ledger.rows if x.kind == "train" and x.status == "ok"]
    assert sorted(Counter(x.direction for x in train).items()) == [("down", 16), ("up", 15)]
    for row in train:
        if row.direction == "up":
            assert row.payload == payload_bytes(to_records(get_codec("fp32").encode(ups[row.round][0]))[1])
        else:  # nf4 of every factor
            assert row.payload == payload_bytes(to_records(strategy.downlink.codec.encode(_initial()))[1])
    per_factor, _, _ = _run(_cfg(rounds=1, downlink="nf4"), Clients({1: _updates(4, 41)}, [1, 2, 3, 4]))
    assert per_factor.round_stats[1]["aggregation_error"] > 1e-3


def test_alternating_refuses_server_optimisers_that_keep_per_array_state():
    from fedkron.runconfig.fields import ConfigError

    for kw in (dict(strategy="fedavgm"), dict(strategy="fedadam"), dict(strategy="fedyogi"), dict(server_lr=0.5)):
        with pytest.raises(ConfigError, match="aggregation 'alternating' cannot run with .* per array"):
            _cfg(aggregation="alternating", **kw)
        _cfg(aggregation="per-factor", **kw)  # fine where the same arrays travel every round
    for name in ("fedavg", "fedprox", "fedmedian", "fedtrimmedavg"):
        assert _cfg(aggregation="alternating", strategy=name).strategy == name
