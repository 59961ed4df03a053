"""The server's default defences against one client, driven in-process (LoopbackGrid, no Ray).

Each test is an attack found by review: a huge update in a round of two replies, an evaluation
reply that claims a billion examples, a node that replies twice, a reply padded with extra records
for the ledger to inflate, NaN weights in an adapter folder, and the wrapper's RNG leaking into
numpy's global state.
"""

import math
import zlib

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message
from loopback import LoopbackGrid
from test_strategy import ROLES, SHAPES, Clients, _cfg, _initial, _run, _updates

from fedkron.compression import MANIFEST_KEY
from fedkron.compression.manifest import build_manifest, dump_manifest
from fedkron.protocol import MANIFEST, make_eval_reply, read_broadcast
from fedkron.runconfig.fields import RunConfig
from fedkron.strategies.registry import build_strategy
from fedkron.strategies.wrapper import FedKron, to_arrayrecord

DEFAULTS = RunConfig().to_record()


def _max_abs(state):
    return max(float(v.abs().max()) for v in state.values())


# --- 1. the norm bound holds with two replies and no history ------------------------------------


@pytest.mark.parametrize("clients, fraction", [(4, 0.5), (10, 0.2)])
def test_a_huge_update_in_a_round_of_two_is_rejected_and_never_becomes_history(flower_identity, clients, fraction):
    rounds = 4
    ups = {r: _updates(clients, 30 + r) for r in range(1, rounds + 1)}
    for r in ups:  # partition 1 scales its update ×1e30 every round
        ups[r][1] = {k: 1e30 * v for k, v in ups[r][1].items()}
    cfg = _cfg(clients=clients, fraction=fraction, rounds=rounds)
    clients_ = Clients(ups, [1] * clients)
    strategy, final, ledger = _run(cfg, clients_)
    attacked = sorted({s["round"] for s in clients_.seen if s["pid"] == 1})
    assert attacked, "the seeded draw never picked the attacker: pick another seed"
    assert all(strategy.round_stats[r]["rejected"] == 1 for r in attacked)
    assert all(strategy.round_stats[r]["accepted"] == 2 for r in range(1, rounds + 1) if r not in attacked)
    assert [r.partition_id for r in ledger.rows if r.status == "rejected"] == [1] * len(attacked)
    assert _max_abs(final) < 10  # the honest updates are 0.1·N(0, 1)


def test_the_bound_of_a_two_reply_round_is_anchored_on_the_global_adapter():
    from fedkron.strategies.defences import NormBound

    bound = NormBound(factor=10, anchor=2.0)
    assert bound.keep([0.5, 1e30]) == [0]  # median of (0.5, 1e30, anchor 2): bound 20
    assert bound.reference == 2.0  # the huge norm never becomes the reference
    assert bound.keep([0.4, 0.6]) == [0, 1]
    assert bound.reference == 0.6  # the honest replies move it
    assert bound.keep([5.9]) == [0] and bound.keep([7.0]) == []  # one reply: at most factor × the reference
    assert NormBound(factor=0, anchor=1.0).keep([1e30, 1.0]) == [0, 1]  # 0: off


def test_the_norm_reference_survives_a_checkpoint(flower_identity):
    cfg = _cfg(rounds=1)
    strategy, _, _ = _run(cfg, Clients({1: _updates(4, 3)}, [1] * 4))
    tensors, values = strategy.state_dict()
    fresh = FedKron(build_strategy(cfg), cfg, _initial(), ROLES)
    assert fresh.norm_bound.reference != strategy.norm_bound.reference
    fresh.load_state_dict(_initial(), tensors, values)
    assert fresh.norm_bound.reference == strategy.norm_bound.reference


# --- 2. evaluation replies are weighted like training replies -----------------------------------


class Scorers(Clients):
    """Clients whose evaluation replies report ``scores[pid]`` = (examples, accuracy)."""

    def __init__(self, scores):
        super().__init__({1: _updates(len(scores), 1)}, [1] * len(scores))
        self.scores = scores

    def __call__(self, msg, context):
        if msg.metadata.message_type != "evaluate":
            return super().__call__(msg, context)
        read_broadcast(msg.content, DEFAULTS)
        examples, accuracy = self.scores[int(context.node_config["partition-id"])]
        return Message(make_eval_reply(examples, 0.5, accuracy), reply_to=msg)


def test_one_evaluation_reply_cannot_set_the_federated_accuracy(flower_identity):
    scores = [(8, 0.5), (8, 0.5), (8, 0.5), (10**9, 1.0)]
    cfg = _cfg(rounds=1, fraction_evaluate=1.0, eval_samples=8)
    strategy, _, _ = _run(cfg, Scorers(scores))
    weights = [min(n, 8) for n, _ in scores]  # no client scores more than --eval-samples rows
    expected = sum(w * a for w, (_, a) in zip(weights, scores)) / sum(weights)
    assert strategy.round_stats[1]["fed_accuracy"] == pytest.approx(expected)
    assert strategy.round_stats[1]["fed_examples"] == sum(weights)
    # scoring the whole split (eval-samples 0): the share cap of --max-weight-share holds
    strategy, _, _ = _run(_cfg(rounds=1, fraction_evaluate=1.0, eval_samples=0, max_weight_share=0.5), Scorers(scores))
    assert strategy.round_stats[1]["fed_accuracy"] == pytest.approx((0.5 * 24 + 1.0 * 24) / 48)


# --- 3. duplicates, the ledger's reading, adapter files -----------------------------------------


def _one_round(cfg, clients, extra=lambda replies: replies):
    """Round 1 by hand: ``extra(replies)`` may add what a misbehaving node sends."""
    strategy = FedKron(build_strategy(cfg), cfg, _initial(), ROLES, partition_sizes=dict(enumerate(clients.examples)))
    grid = LoopbackGrid(cfg.clients, clients)
    messages = list(strategy.configure_train(1, to_arrayrecord(_initial()), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages)
    arrays, metrics = strategy.aggregate_train(1, extra(replies))
    return strategy, {k: arrays[k].numpy() for k in SHAPES}, metrics


def test_a_nodes_second_reply_in_a_round_is_rejected(flower_identity, caplog):
    ups = {1: _updates(4, 8)}
    _, clean, _ = _one_round(_cfg(rounds=1), Clients(ups, [1, 2, 3, 4]))

    def twice(replies):  # the first node answers its message a second time
        return replies + [Message(replies[0].content, reply_to=_request_of(replies[0]))]

    strategy, doubled, metrics = _one_round(_cfg(rounds=1), Clients(ups, [1, 2, 3, 4]), twice)
    assert (metrics["accepted"], metrics["rejected"], metrics["failed"]) == (4, 1, 0)
    for k in SHAPES:
        np.testing.assert_array_equal(doubled[k], clean[k])
    assert any("second reply" in r.getMessage() for r in caplog.records)


_REQUESTS: dict[str, Message] = {}


def _request_of(reply):
    return _REQUESTS[reply.metadata.reply_to_message_id]


@pytest.fixture(autouse=True)
def _remember_requests(monkeypatch):
    answer = LoopbackGrid._answer

    def remembering(self, messages):
        messages = list(messages)
        replies = answer(self, messages)
        _REQUESTS.update({m.metadata.message_id: m for m in messages})
        return replies

    monkeypatch.setattr(LoopbackGrid, "_answer", remembering)


def _bomb(size):
    """A deflate stream that inflates to ``size`` bytes of a JSON string: a manifest-looking bomb."""
    return zlib.compress(b'"' + b" " * size + b'"', 9)


class Padded(Clients):
    """Partition 0 adds ``extra`` ConfigRecords (each with a manifest entry) to its reply, or
    replaces its manifest with ``manifest``."""

    def __init__(self, extra=0, manifest=None):
        super().__init__({1: _updates(2, 2)}, [1, 1])
        self.extra, self.manifest = extra, manifest

    def __call__(self, msg, context):
        reply = super().__call__(msg, context)
        if msg.metadata.message_type == "train" and int(context.node_config["partition-id"]) == 0:
            for i in range(self.extra):
                reply.content[f"pad{i}"] = ConfigRecord({MANIFEST_KEY: _manifest_of(10**7)})
            if self.manifest is not None:
                reply.content[MANIFEST][MANIFEST_KEY] = self.manifest
        return reply


def _manifest_of(numel):
    """A valid manifest that declares ``numel`` fp32 values (``4·numel`` payload bytes)."""
    return dump_manifest(build_manifest("fp32", None, [("w", (numel,), "float32")]))


def _train_up(ledger):
    return sorted(
        (r.partition_id, r.payload, r.status) for r in ledger.rows if r.kind == "train" and r.direction == "up"
    )


def test_the_ledger_counts_only_the_records_the_protocol_expects(flower_identity):
    cfg = _cfg(clients=2, rounds=1)
    _, _, clean = _run(cfg, Padded())
    _, _, padded = _run(cfg, Padded(extra=4))
    assert _train_up(padded) == _train_up(clean)  # four extra records declaring 40 MB each: not payload
    sizes = [
        next(r.content_bytes for r in ledger.rows if (r.kind, r.direction, r.partition_id) == ("train", "up", 0))
        for ledger in (clean, padded)
    ]
    assert sizes[1] > sizes[0]  # what crossed the wire is still counted in the wire figures


def test_the_ledger_inflates_a_manifest_no_further_than_read_reply(flower_identity, monkeypatch):
    import fedkron.compression.manifest as manifest_module

    inflated = []
    real = manifest_module.zlib.decompressobj

    class Counting:
        def __init__(self):
            self.inner = real()

        def decompress(self, data, max_length=0):
            out = self.inner.decompress(data, max_length)
            inflated.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(manifest_module.zlib, "decompressobj", Counting)
    strategy, _, ledger = _run(_cfg(clients=2, rounds=1), Padded(manifest=_bomb(4 << 20)))
    assert strategy.round_stats[1]["rejected"] == 1
    limit = max(inflated)
    assert limit < 64 << 10  # the bound of the expected manifest, not 8 MiB
    row = next(r for r in ledger.rows if r.kind == "train" and r.direction == "up" and r.partition_id == 0)
    assert row.status == "rejected" and row.payload == 0


def test_load_adapter_refuses_non_finite_and_absurd_weights(tmp_path):
    from safetensors.torch import load_file, save_file
    from test_adapters_loading import tiny_bert

    from fedkron.adapters import AdapterConfig, AdapterStateError, inject, load_adapter, save_adapter

    folder = save_adapter(inject(tiny_bert(), AdapterConfig(method="kron-lora", rank=4)), tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    good = load_file(str(weights))
    name = sorted(good)[0]
    for bad, what in ((math.nan, "non-finite"), (math.inf, "non-finite"), (1e38, "magnitude")):
        tensors = dict(good)
        tensors[name] = good[name].clone().reshape(-1)
        tensors[name][0] = bad
        tensors[name] = tensors[name].reshape(good[name].shape)
        save_file(tensors, str(weights))
        with pytest.raises(AdapterStateError, match=f"{name}.*{what}"):
            load_adapter(tiny_bert(), folder)
    save_file(good, str(weights))
    load_adapter(tiny_bert(), folder)


# --- 4. no global RNG state -----------------------------------------------------------------------


def test_aggregation_leaves_numpys_global_random_state_alone(flower_identity):
    pytest.importorskip("dp_accounting")
    tiny = {1: [{k: 1e-9 * v for k, v in u.items()} for u in _updates(4, 2)]}
    cfg = _cfg(rounds=1, clip_norm=0.5, dp_noise=2.0)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    _, first, _ = _run(cfg, Clients(tiny, [3, 5, 7, 9]))
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.seed(999)  # another caller's state must not change the server's noise
    _, second, _ = _run(cfg, Clients(tiny, [3, 5, 7, 9]))
    for k in SHAPES:
        assert torch.equal(first[k], second[k])
