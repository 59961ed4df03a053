"""The wire protocol: broadcasts and replies round-trip, and every field of a reply is checked."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord, Message, RecordDict

from fedkron.compression import get_codec
from fedkron.protocol import (
    ARRAYS,
    CONFIG,
    METRICS,
    ROUND,
    Broadcast,
    RejectedReply,
    broadcast_names,
    make_broadcast,
    make_eval_reply,
    make_info,
    make_reply,
    read_broadcast,
    read_eval_reply,
    read_info,
    read_reply,
    round_role,
    sent_names,
)
from fedkron.sim.faults import corrupt

SHAPES = {"layer.A": torch.Size([2, 3]), "layer.B1": torch.Size([4, 2]), "head.weight": torch.Size([5])}


def _reply(update, codec="nf4", **metrics):
    values = {"num-examples": 10, "train-loss": 0.5, "partition-id": 3, **metrics}
    sent = Message(RecordDict(), dst_node_id=7, message_type="train")
    return Message(make_reply(get_codec(codec).encode(update), values), reply_to=sent)


@pytest.fixture
def update():
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) * 0.01 for k, s in SHAPES.items()}


def _read(msg, codec="nf4", **kw):
    return read_reply(msg, SHAPES, (codec,), **kw)


def test_valid_reply_is_decoded(flower_identity, update):
    reply = _read(_reply(update))
    assert reply.node_id == 7 and reply.partition_id == 3 and reply.num_examples == 10
    assert reply.metrics["train-loss"] == 0.5
    for k in SHAPES:
        assert torch.allclose(reply.update[k], update[k], atol=0.01 * 0.2)


@pytest.mark.parametrize("fault", ["nan-scales", "truncated", "bad-manifest", "wrong-shape"])
def test_corrupted_replies_are_rejected(flower_identity, update, fault):
    with pytest.raises(RejectedReply):
        _read(corrupt(_reply(update), fault))


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({"num-examples": 0}, "num-examples 0"),
        ({"num-examples": 2.5}, "not an integer"),
        ({"num-examples": math.inf}, "num-examples"),
        ({"num-examples": 10**12}, "num-examples"),
        ({"partition-id": math.nan}, "partition-id nan"),
        ({"partition-id": 10**8}, "partition-id"),
        ({"partition-id": -1}, "partition-id -1"),
        ({"train-loss": math.inf}, "train-loss"),
        ({"train-seconds": -1.0}, "train-seconds"),
        ({"train-loss": [1.0, 2.0]}, "not a number"),
    ],
)
def test_every_metric_is_checked(flower_identity, update, metrics, message):
    with pytest.raises(RejectedReply, match=message):
        _read(_reply(update, **metrics))


def test_missing_records_and_wrong_record_types_are_rejected(flower_identity, update):
    for drop in (ARRAYS, METRICS, "manifest"):
        msg = _reply(update)
        del msg.content[drop]
        with pytest.raises(RejectedReply, match=f"lacks the '{drop}' record"):
            _read(msg)
    msg = _reply(update)
    msg.content[METRICS] = ConfigRecord({"num-examples": 3})
    with pytest.raises(RejectedReply, match="is a ConfigRecord, not a MetricRecord"):
        _read(msg)


def test_well_formed_malicious_updates_pass_the_format_checks_but_not_a_norm_bound(flower_identity, update):
    honest = _read(_reply(update, codec="fp32"), codec="fp32").update
    scaled = _read(corrupt(_reply(update, codec="fp32"), "scale-100"), codec="fp32").update
    for k in SHAPES:
        torch.testing.assert_close(scaled[k], 100 * honest[k])
    bound = 10 * float(torch.cat([v.flatten() for v in honest.values()]).norm())
    _read(_reply(update, codec="fp32"), codec="fp32", max_update_norm=bound)
    with pytest.raises(RejectedReply, match="exceeds the bound"):
        _read(corrupt(_reply(update, codec="fp32"), "scale-100"), codec="fp32", max_update_norm=bound)


def test_rejects_wrong_names_shapes_codec_and_non_finite_values(flower_identity, update):
    with pytest.raises(RejectedReply, match=r"'layer.A' has shape \(3, 2\), expected \(2, 3\)"):
        _read(_reply(dict(update, **{"layer.A": torch.zeros(3, 2)})))
    with pytest.raises(RejectedReply, match="manifest lists 2 tensors, expected 3"):
        _read(_reply({k: v for k, v in update.items() if k != "head.weight"}))
    with pytest.raises(RejectedReply, match="codec 'fp32' not allowed"):
        _read(_reply(update, codec="fp32"))
    inf_reply = _reply(update, codec="fp32")
    codes = inf_reply.content[ARRAYS]["codes"].numpy().copy()
    codes.view(np.float32)[-5:] = np.inf  # head.weight, the last tensor, sent as inf
    inf_reply.content[ARRAYS]["codes"] = Array(codes)
    with pytest.raises(RejectedReply, match="head.weight.*non-finite"):
        _read(inf_reply, codec="fp32")


def test_broadcast_sends_only_what_differs_from_the_defaults_and_checks_the_rest(update):
    defaults = {"task": "boolq", "data-dir": "", "rank": 8, "lr": 0.002}
    run = {**defaults, "task": "sst2", "rank": 4}
    content = make_broadcast(get_codec("fp32").encode(update), run, defaults, {ROUND: 3, "round-lr": 0.001})
    assert set(content[CONFIG]) == {"task", "rank", ROUND, "round-lr", "config-digest"}
    got = read_broadcast(content, defaults)
    assert isinstance(got, Broadcast) and got.server_round == 3 and got.round_lr == 0.001
    assert got.config == run and got.frozen_digest is None
    for k in update:
        assert torch.equal(got.state[k], update[k])
    with pytest.raises(ValueError, match="differs from the server's"):  # a client with other defaults
        read_broadcast(content, {**defaults, "lr": 0.01})
    with pytest.raises(ValueError, match="does not know: bogus"):
        read_broadcast(
            make_broadcast(get_codec("fp32").encode(update), {**run, "bogus": 1}, defaults, {ROUND: 1}), defaults
        )


def test_info_and_evaluation_replies_are_checked(flower_identity):
    sent = Message(RecordDict(), dst_node_id=7, message_type="query")
    assert read_info(Message(make_info(4, 5), reply_to=sent)) == (4, 5)
    assert read_info(Message(make_info(0, 1), reply_to=sent)) == (0, 1)  # its own data
    for bad in ((5, 5), (-1, 5), (1.5, 5), (math.nan, 5), (1, 1), (0, 0), (0, math.inf), (0, 10**12)):
        with pytest.raises(RejectedReply):
            read_info(Message(make_info(*bad), reply_to=sent))
    with pytest.raises(RejectedReply, match="lacks the 'info' record"):
        read_info(Message(RecordDict(), reply_to=sent))
    ev = Message(RecordDict(), dst_node_id=7, message_type="evaluate")
    assert read_eval_reply(Message(make_eval_reply(20, 0.4, 0.75), reply_to=ev)) == (20, 0.4, 0.75)
    for args in ((20, 0.4, 1.5), (0, 0.4, 0.5), (20, math.nan, 0.5)):
        with pytest.raises(RejectedReply):
            read_eval_reply(Message(make_eval_reply(*args), reply_to=ev))


def test_exact_mode_sends_the_output_side_factor_of_every_method():
    roles = {
        "a.A": "A",
        "a.B1": "B1",
        "a.B2": "B2",
        "b.A": "A",
        "b.B": "B",
        "c.lora_A": "lora_A",
        "c.lora_B": "lora_B",
        "head.weight": "full",
    }
    assert sent_names(roles, "exact") == ["a.B1", "b.B", "c.lora_B", "head.weight"]
    assert sent_names(roles, "per-factor") == list(roles)
    assert broadcast_names(roles, "exact") == sent_names(roles, "exact")
    assert broadcast_names(roles, "per-factor") == broadcast_names(roles, "alternating") == list(roles)


@pytest.mark.parametrize(
    "method_roles, b_zero, a_zero",
    [
        (("A", "B1", "B2"), ["B1", "B2", "A"], ["A", "B1", "B2"]),
        (("A", "B"), ["B", "A"], ["A", "B"]),
        (("lora_A", "lora_B"), ["lora_B", "lora_A"], ["lora_A", "lora_B"]),
    ],
)
def test_alternating_mode_cycles_one_factor_a_round_from_the_zero_initialised_one(method_roles, b_zero, a_zero):
    roles = {f"{layer}.{r}": r for layer in ("q", "v") for r in method_roles} | {"head.weight": "full"}
    cycle = len(method_roles)
    for rnd in range(1, 2 * cycle + 1):
        role = b_zero[(rnd - 1) % cycle]
        assert round_role(roles, rnd) == role
        assert round_role(roles, rnd, init="a-zero") == a_zero[(rnd - 1) % cycle]
        assert sent_names(roles, "alternating", rnd) == [f"q.{role}", f"v.{role}", "head.weight"]  # model order
    with pytest.raises(ValueError, match="give the round"):
        sent_names(roles, "alternating")
