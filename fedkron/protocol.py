"""The messages between server and clients: record keys, the broadcast, the replies, their checks.

Client and server both build and read messages here and nowhere else, so the wire format has one
definition. Nothing a client sends is trusted: a reply is read field by field, every number is
checked, and anything wrong raises :class:`RejectedReply` (the server drops that reply only).
Payloads are packed buffers plus a JSON manifest (:mod:`fedkron.compression`); nothing is
unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedkron.adapters.layers import KronALayer, KronLoRALayer, LoRALayer
from fedkron.compression import Encoded, PayloadError, decode, from_records, to_records

# Record keys of a message's content.
ARRAYS, MANIFEST, CONFIG, METRICS, INFO = "arrays", "manifest", "config", "metrics", "info"
# Entries the server adds to the broadcast config beside the run config.
ROUND = "server-round"  # also what Flower's strategies write
FROZEN_DIGEST = "frozen-digest"  # exact mode: fingerprint of the factors that never travel
ROUND_LR = "round-lr"  # the local learning rate of this round (a schedule across rounds)
PROXIMAL_MU = "proximal-mu"  # FedProx's proximal term weight (Flower's key)
CONFIG_DIGEST = "config-digest"  # of the whole run config; only non-default settings travel
SERVER_ONLY = ("resume", "overwrite")  # how the server runs, not what clients do: never sent
# Metrics a client reports with its update.
NUM_EXAMPLES, PARTITION_ID, NUM_PARTITIONS, TRAIN_LOSS = "num-examples", "partition-id", "num-partitions", "train-loss"
MAX_PARTITIONS = 10**7  # the largest split a partition id may come from (a node with its own data: 1)
TIMINGS = ("train-seconds", "client-seconds")
PEAK_MEMORY = "peak-memory-bytes"  # the client process's high-water mark (RSS, or CUDA allocated)
EVAL_LOSS, EVAL_ACCURACY = "eval-loss", "eval-accuracy"

# Roles that travel in exact mode: the output-side factor (ΔW is linear in it while the others stay
# at their shared seeded init) and fully trained modules such as the task head.
EXACT_ROLES = ("B1", "B", "lora_B", "full")
# Alternating mode: the order each method's factors train in, one role a round for every client,
# starting with the factor the adapter's init zeroes (training another one while it is still zero
# has zero gradient): Kron-LoRA B1 → B2 → A, KronA B → A, LoRA lora_B → lora_A (as RoLoRA).
ALTERNATING_CYCLES = (("B1", "B2", "A"), ("B", "A"), ("lora_B", "lora_A"))

# init ("b-zero", "a-zero") → cycle → the role that init zeroes, read from the layers themselves.
ZERO_ROLES = {
    init: {c: k.roles[k.zero_factor[init]] for c, k in zip(ALTERNATING_CYCLES, (KronLoRALayer, KronALayer, LoRALayer))}
    for init in KronLoRALayer.zero_factor
}


class RejectedReply(ValueError):
    """A reply that must not be used; the message says why."""


# --- what travels -------------------------------------------------------------------------------


def round_role(roles: Mapping[str, str], server_round: int, init: str = "b-zero") -> str:
    """The factor role every client trains in ``server_round`` (from 1) of an ``alternating`` run:
    the method's cycle, started at the factor ``init`` zeroes. Depends on the round number alone, so
    server and clients (and a resumed run) agree without telling each other."""
    present = set(roles.values())
    for cycle in ALTERNATING_CYCLES:
        if set(cycle) <= present:
            start = cycle.index(ZERO_ROLES[init][cycle])
            return cycle[(start + server_round - 1) % len(cycle)]
    raise ValueError(f"alternating aggregation needs adapter factors; roles here: {sorted(present)}")


def sent_names(roles: Mapping[str, str], aggregation: str, server_round: int | None = None) -> list[str]:
    """State names a client trains and sends in ``server_round``, in model order: ``exact``, the
    output-side factor and full modules; ``alternating``, the round's factor (:func:`round_role`)
    and full modules; ``per-factor``, everything."""
    if aggregation == "exact":
        return [name for name, role in roles.items() if role in EXACT_ROLES]
    if aggregation == "alternating":
        if server_round is None:
            raise ValueError("alternating aggregation sends a different factor each round: give the round")
        now = round_role(roles, server_round)
        return [name for name, role in roles.items() if role in (now, "full")]
    return list(roles)


def broadcast_names(roles: Mapping[str, str], aggregation: str) -> list[str]:
    """State names every broadcast carries, in model order. ``alternating`` sends all factors each
    round (a client is stateless between rounds, and the factors it does not train moved in earlier
    rounds); ``exact`` only what trains (the rest is each side's seeded init)."""
    return sent_names(roles, aggregation) if aggregation == "exact" else list(roles)


def frozen_digest(state: Mapping[str, torch.Tensor], sent: list[str]) -> str:
    """Fingerprint of what ``exact`` mode does not send (the seeded init of the other factors), so
    a client whose seeded build differs from the server's fails loudly instead of training another
    model."""
    h = hashlib.sha256()
    for name in sorted(set(state) - set(sent)):
        h.update(name.encode())
        h.update(state[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# --- server → client ----------------------------------------------------------------------------


def config_digest(config: Mapping[str, Any]) -> str:
    """Fingerprint of a whole run config (sorted JSON)."""
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode()).hexdigest()[:16]


def make_broadcast(
    encoded: Encoded, run_config: Mapping[str, Any], defaults: Mapping[str, Any], server: Mapping[str, Any]
) -> RecordDict:
    """The encoded global factors, the run config and this round's ``server`` entries.

    Only settings that differ from ``defaults`` travel (both sides run the same fedkron, so they
    agree on defaults), with a digest of the whole config that the client checks after filling in
    its own defaults: about 1.5 kB less on every downlink message, and a client whose defaults
    differ (another version) refuses instead of training with other settings."""
    arrays, manifest = to_records(encoded)
    run_config = {k: v for k, v in run_config.items() if k not in SERVER_ONLY}
    entries = {k: v for k, v in run_config.items() if defaults.get(k, object()) != v}
    entries.update({CONFIG_DIGEST: config_digest(run_config), **server})
    return RecordDict({ARRAYS: arrays, MANIFEST: manifest, CONFIG: ConfigRecord(entries)})


@dataclass
class Broadcast:
    state: dict[str, torch.Tensor]
    config: dict[str, Any]  # run-config keys only
    server_round: int
    round_lr: float | None
    frozen_digest: str | None


def read_broadcast(content: RecordDict, defaults: Mapping[str, Any]) -> Broadcast:
    """Decode a broadcast; ``defaults`` is this client's run config at its defaults (hyphen keys)."""
    sent = dict(content[CONFIG])
    server = {k: sent.pop(k) for k in (ROUND, FROZEN_DIGEST, ROUND_LR, CONFIG_DIGEST) if k in sent}
    unknown = sorted(set(sent) - set(defaults))
    if unknown:
        raise ValueError(
            f"the server sent settings this client does not know: {', '.join(unknown)} "
            "(server and clients must run the same fedkron version)"
        )
    config = {k: v for k, v in {**defaults, **sent}.items() if k not in SERVER_ONLY}
    if server.get(CONFIG_DIGEST) != config_digest(config):
        raise ValueError(
            "the run config rebuilt from this client's defaults differs from the server's "
            "(server and clients must run the same fedkron version)"
        )
    encoded = from_records(content[ARRAYS], content[MANIFEST])
    lr = server.get(ROUND_LR)
    return Broadcast(
        state=decode(encoded),
        config=config,
        server_round=int(server[ROUND]),
        round_lr=None if lr is None else float(lr),
        frozen_digest=server.get(FROZEN_DIGEST),
    )


# --- client → server ----------------------------------------------------------------------------


def make_reply(encoded: Encoded, metrics: Mapping[str, int | float]) -> RecordDict:
    arrays, manifest = to_records(encoded)
    return RecordDict({ARRAYS: arrays, MANIFEST: manifest, METRICS: MetricRecord(dict(metrics))})


def make_eval_reply(num_examples: int, loss: float, accuracy: float | None) -> RecordDict:
    """A federated-evaluation reply (no accuracy for instruction data: its loss is the score)."""
    values = {NUM_EXAMPLES: num_examples, EVAL_LOSS: loss}
    if accuracy is not None:
        values[EVAL_ACCURACY] = accuracy
    return RecordDict({METRICS: MetricRecord(values)})


def make_info(partition_id: int, num_partitions: int) -> RecordDict:
    """A node's answer to the partition query: its share of the common task data (``i`` of ``n``),
    or ``0`` of ``1`` for a node that trains on a data folder of its own."""
    return RecordDict({INFO: MetricRecord({PARTITION_ID: partition_id, NUM_PARTITIONS: num_partitions})})


@dataclass
class ValidReply:
    node_id: int
    partition_id: int
    update: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float]
    norm: float  # L2 norm of the whole update


def read_reply(
    msg: Message,
    expected: Mapping[str, torch.Size],
    allowed_codecs: tuple[str, ...],
    max_examples: int = 10**9,
    max_update_norm: float = math.inf,
) -> ValidReply:
    """Decode and check one training reply, or raise :class:`RejectedReply` (the partition id it
    reports is compared with the node's by the caller)."""
    content = msg.content
    arrays, manifest, metrics = _records(
        content, (ARRAYS, ArrayRecord), (MANIFEST, ConfigRecord), (METRICS, MetricRecord)
    )
    pid = _integer(metrics, PARTITION_ID, 0, MAX_PARTITIONS - 1)
    num_examples = _integer(metrics, NUM_EXAMPLES, 1, max_examples)
    numbers = {TRAIN_LOSS: _number(metrics, TRAIN_LOSS, 0.0, math.inf)}
    numbers.update({k: _number(metrics, k, 0.0, math.inf) for k in TIMINGS + (PEAK_MEMORY,) if k in metrics})
    try:  # names, shapes and sizes are checked against `expected` before anything is allocated
        encoded = from_records(arrays, manifest, expected)
        if encoded.codec not in allowed_codecs:
            raise RejectedReply(f"codec {encoded.codec!r} not allowed (expected one of {allowed_codecs})")
        update = decode(encoded)
    except PayloadError as err:
        raise RejectedReply(f"undecodable payload: {err}") from None
    for name in expected:
        if not torch.isfinite(update[name]).all():
            raise RejectedReply(f"{name}: non-finite values")
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))
    if norm > max_update_norm:
        raise RejectedReply(f"update norm {norm:.3g} exceeds the bound {max_update_norm:.3g}")
    return ValidReply(
        node_id=msg.metadata.src_node_id,
        partition_id=pid,
        update=update,
        num_examples=num_examples,
        metrics=numbers,
        norm=norm,
    )


def read_eval_reply(msg: Message, max_examples: int = 10**9) -> tuple[int, float, float | None]:
    """(examples, loss, accuracy or None) of a federated-evaluation reply, or :class:`RejectedReply`."""
    (metrics,) = _records(msg.content, (METRICS, MetricRecord))
    accuracy = _number(metrics, EVAL_ACCURACY, 0.0, 1.0) if EVAL_ACCURACY in metrics else None
    return _integer(metrics, NUM_EXAMPLES, 1, max_examples), _number(metrics, EVAL_LOSS, 0.0, math.inf), accuracy


def read_info(msg: Message) -> tuple[int, int]:
    """(partition id, number of partitions) a node reports in answer to the server's query: its
    share of a common data set, or (0, 1) for a node with a data folder of its own."""
    (info,) = _records(msg.content, (INFO, MetricRecord))
    num = _integer(info, NUM_PARTITIONS, 1, MAX_PARTITIONS)
    return _integer(info, PARTITION_ID, 0, num - 1), num


def _records(content: RecordDict, *wanted: tuple[str, type]) -> list:
    out = []
    for key, kind in wanted:
        if key not in content:
            raise RejectedReply(f"reply lacks the {key!r} record")
        record = content[key]
        if not isinstance(record, kind):
            raise RejectedReply(f"reply record {key!r} is a {type(record).__name__}, not a {kind.__name__}")
        out.append(record)
    return out


def _number(metrics: MetricRecord, key: str, low: float, high: float) -> float:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RejectedReply(f"{key} {value!r} is not a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise RejectedReply(f"{key} {value!r} is outside [{low}, {high}]")
    return float(value)


def _integer(metrics: MetricRecord, key: str, low: int, high: int) -> int:
    value = _number(metrics, key, low, high)
    if not value.is_integer():
        raise RejectedReply(f"{key} {value!r} is not an integer")
    return int(value)
