"""The per-factor strategy's pieces: weighted mean, reply validation, ledger."""

import numpy as np
import pytest
import torch
from flwr.app import Array, Message, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkron.client.faulty import corrupt
from fedkron.compression import get_codec, to_records
from fedkron.strategies import Ledger, LedgerRow, RejectedReply, decode_reply, weighted_mean
from fedkron.strategies.validation import ARRAYS_KEY, MANIFEST_KEY, METRICS_KEY

SHAPES = {"layer.A": torch.Size([2, 3]), "layer.B1": torch.Size([4, 2]), "head.weight": torch.Size([5])}


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 5),
    weights=st.lists(st.integers(1, 1000), min_size=5, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_weighted_mean_matches_hand_computation(n, weights, seed):
    g = torch.Generator().manual_seed(seed)
    updates = [{k: torch.randn(s, generator=g) for k, s in SHAPES.items()} for _ in range(n)]
    w = weights[:n]
    mean = weighted_mean(updates, w)
    for k in SHAPES:
        expected = np.zeros(SHAPES[k])
        for u, wi in zip(updates, w):
            expected += u[k].numpy().astype(np.float64) * wi
        expected /= sum(w)
        np.testing.assert_allclose(mean[k].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_weighted_mean_rejects_bad_weights():
    u = {"a": torch.ones(2)}
    with pytest.raises(ValueError, match="sum to > 0"):
        weighted_mean([u], [0])
    with pytest.raises(ValueError, match="2 updates but 1 weights"):
        weighted_mean([u, u], [1])


def _reply(update, codec="nf4", num_examples=10, pid=3):
    arrays, manifest = to_records(get_codec(codec).encode(update))
    metrics = MetricRecord({"num-examples": num_examples, "train-loss": 0.5, "partition-id": pid})
    sent = Message(RecordDict(), dst_node_id=7, message_type="train")
    return Message(RecordDict({ARRAYS_KEY: arrays, MANIFEST_KEY: manifest, METRICS_KEY: metrics}), reply_to=sent)


@pytest.fixture
def update():
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) * 0.01 for k, s in SHAPES.items()}


def test_valid_reply_is_decoded(flower_identity, update):
    reply = decode_reply(_reply(update), SHAPES, ("nf4",))
    assert reply.node_id == 7 and reply.partition_id == 3 and reply.num_examples == 10
    for k in SHAPES:
        assert torch.allclose(reply.update[k], update[k], atol=0.01 * 0.2)


@pytest.mark.parametrize("fault", ["nan-scales", "truncated", "bad-manifest", "wrong-shape"])
def test_corrupted_replies_are_rejected(flower_identity, update, fault):
    with pytest.raises(RejectedReply):
        decode_reply(corrupt(_reply(update), fault), SHAPES, ("nf4",))


def test_well_formed_malicious_updates_pass_validation_but_not_a_norm_bound(flower_identity, update):
    honest = decode_reply(_reply(update, codec="fp32"), SHAPES, ("fp32",)).update
    scaled = decode_reply(corrupt(_reply(update, codec="fp32"), "scale-100"), SHAPES, ("fp32",)).update
    flipped = decode_reply(corrupt(_reply(update, codec="fp32"), "sign-flip"), SHAPES, ("fp32",)).update
    for k in SHAPES:
        torch.testing.assert_close(scaled[k], 100 * honest[k])
        torch.testing.assert_close(flipped[k], -honest[k])
    bound = 10 * float(torch.cat([v.flatten() for v in honest.values()]).norm())
    decode_reply(_reply(update, codec="fp32"), SHAPES, ("fp32",), max_update_norm=bound)
    with pytest.raises(RejectedReply, match="exceeds the bound"):
        decode_reply(corrupt(_reply(update, codec="fp32"), "scale-100"), SHAPES, ("fp32",), max_update_norm=bound)


def test_rejects_wrong_names_shapes_codec_and_counts(flower_identity, update):
    wrong_shape = dict(update, **{"layer.A": torch.zeros(3, 2)})
    with pytest.raises(RejectedReply, match=r"layer.A: shape \(3, 2\)"):
        decode_reply(_reply(wrong_shape), SHAPES, ("nf4",))
    missing = {k: v for k, v in update.items() if k != "head.weight"}
    with pytest.raises(RejectedReply, match="missing \\['head.weight'\\]"):
        decode_reply(_reply(missing), SHAPES, ("nf4",))
    with pytest.raises(RejectedReply, match="codec 'fp32' not allowed"):
        decode_reply(_reply(update, codec="fp32"), SHAPES, ("nf4",))
    with pytest.raises(RejectedReply, match="num-examples 0"):
        decode_reply(_reply(update, num_examples=0), SHAPES, ("nf4",))
    inf_reply = _reply(update, codec="fp32")
    codes = inf_reply.content[ARRAYS_KEY]["codes"].numpy().copy()
    codes.view(np.float32)[-5:] = np.inf  # head.weight, the last tensor, sent as inf
    inf_reply.content[ARRAYS_KEY]["codes"] = Array(codes)
    with pytest.raises(RejectedReply, match="head.weight.*non-finite"):
        decode_reply(inf_reply, SHAPES, ("fp32",))
    with pytest.raises(RejectedReply, match="norm"):
        decode_reply(_reply(update), SHAPES, ("nf4",), max_update_norm=1e-6)


def test_ledger_totals_and_csv_round_trip(tmp_path):
    ledger = Ledger()
    ledger.add(LedgerRow(1, "down", "train", 11, 0, 100, 120, 150))
    ledger.add(LedgerRow(1, "up", "train", 11, 0, 10, 30, 60))
    ledger.add(LedgerRow(2, "up", "train", 12, 1, 20, 40, 70, status="rejected"))
    assert ledger.total("up") == 130 and ledger.total("down", "payload") == 100
    assert ledger.per_round("up") == {1: 60, 2: 70}
    ledger.write_csv(tmp_path / "ledger.csv")
    again = Ledger.read_csv(tmp_path / "ledger.csv")
    assert again.rows == ledger.rows
    assert again.totals() == ledger.totals()


def test_robust_aggregators_ignore_a_minority_of_outliers():
    from fedkron.strategies.aggregate import coordinate_median, trimmed_mean

    g = torch.Generator().manual_seed(1)
    honest = [{"w": torch.ones(4, 3) + 0.01 * torch.randn(4, 3, generator=g)} for _ in range(8)]
    attackers = [{"w": torch.full((4, 3), 100.0)}, {"w": torch.full((4, 3), -1e4)}]
    for agg in (coordinate_median, lambda u, w: trimmed_mean(u, w, trim=0.2)):
        out = agg(honest + attackers, [1] * 10)["w"]
        assert torch.allclose(out, torch.ones(4, 3), atol=0.05)
    assert weighted_mean(honest + attackers, [1] * 10)["w"].abs().max() > 100  # plain mean is ruined


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.01, 100), max_norm=st.floats(0.1, 10))
def test_clip_update_bounds_the_norm_and_keeps_direction(scale, max_norm):
    from fedkron.strategies.aggregate import clip_update

    u = {"a": torch.tensor([3.0, 4.0]) * scale, "b": torch.tensor([0.0])}
    out = clip_update(u, max_norm)
    norm = float(torch.cat([t.flatten() for t in out.values()]).norm())
    assert norm <= max_norm * (1 + 1e-5) + 1e-6
    assert norm == pytest.approx(min(5 * scale, max_norm), rel=1e-4)
    assert torch.allclose(out["a"] / out["a"].norm(), torch.tensor([0.6, 0.8]), atol=1e-5)


def test_server_optimisers():
    from fedkron.strategies.server_opt import ServerOptimizer

    w = {"x": torch.zeros(3)}
    u = {"x": torch.tensor([1.0, -2.0, 0.5])}
    assert torch.equal(ServerOptimizer("sgd", lr=1.0).step(w, u)["x"], u["x"])  # FedAvg
    avgm = ServerOptimizer("avgm", lr=1.0, momentum=0.5)
    w1 = avgm.step(w, u)
    w2 = avgm.step(w1, u)
    assert torch.allclose(w2["x"], u["x"] * (1 + 1.5))  # v1 = u, v2 = 0.5 u + u
    adam = ServerOptimizer("adam", lr=0.1)
    step = adam.step(w, u)["x"]
    assert torch.equal(step.sign(), u["x"].sign()) and step.abs().max() <= 0.1  # first Adam step ≈ lr · sign(u)
    again = ServerOptimizer("adam", lr=0.1)
    again.load_state_dict(adam.state_dict())
    assert torch.equal(again.step(w, u)["x"], adam.step(w, u)["x"])
    with pytest.raises(ValueError, match="not one of sgd, avgm, adam"):
        ServerOptimizer("lamb")
