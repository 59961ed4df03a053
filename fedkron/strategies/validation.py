"""Check a client's reply before anything from it is averaged.

A reply is decoded completely and checked against the global adapter (names, shapes, finiteness,
example count) first; only a reply that passes every check reaches aggregation. Decoding never
unpickles: payloads are the codec's packed buffers plus a JSON manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedkron.compression import PayloadError, decode, from_records

ARRAYS_KEY, MANIFEST_KEY, METRICS_KEY, CONFIG_KEY = "arrays", "manifest", "metrics", "config"


class RejectedReply(ValueError):
    """A reply that must not be averaged; the message says why."""


@dataclass
class ValidReply:
    node_id: int
    partition_id: int
    update: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, float]


def decode_reply(
    msg: Message,
    expected: dict[str, torch.Size],
    allowed_codecs: tuple[str, ...],
    max_examples: int = 10**9,
    max_update_norm: float = math.inf,
) -> ValidReply:
    """Decode and validate one training reply, or raise :class:`RejectedReply`."""
    content = msg.content
    try:
        arrays = content[ARRAYS_KEY]
        manifest = content[MANIFEST_KEY]
        metrics = content[METRICS_KEY]
    except KeyError as err:
        raise RejectedReply(f"reply lacks the {err} record") from None
    if not isinstance(arrays, ArrayRecord) or not isinstance(manifest, ConfigRecord):
        raise RejectedReply("reply records have the wrong types")
    if not isinstance(metrics, MetricRecord):
        raise RejectedReply("reply metrics are not a MetricRecord")
    try:
        encoded = from_records(arrays, manifest)
        if encoded.codec not in allowed_codecs:
            raise RejectedReply(f"codec {encoded.codec!r} not allowed (expected one of {allowed_codecs})")
        update = decode(encoded)
    except PayloadError as err:
        raise RejectedReply(f"undecodable payload: {err}") from None

    missing = sorted(set(expected) - set(update))
    extra = sorted(set(update) - set(expected))
    if missing or extra:
        raise RejectedReply(f"factor names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        if tuple(update[name].shape) != tuple(shape):
            raise RejectedReply(f"{name}: shape {tuple(update[name].shape)} != expected {tuple(shape)}")
        if not torch.isfinite(update[name]).all():
            raise RejectedReply(f"{name}: non-finite values")
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))
    if norm > max_update_norm:
        raise RejectedReply(f"update norm {norm:.3g} exceeds the bound {max_update_norm:.3g}")

    num_examples = metrics.get("num-examples")
    if not isinstance(num_examples, (int, float)) or not float(num_examples).is_integer():
        raise RejectedReply(f"num-examples {num_examples!r} is not an integer")
    if not 0 < num_examples <= max_examples:
        raise RejectedReply(f"num-examples {num_examples} outside (0, {max_examples}]")
    return ValidReply(
        node_id=msg.metadata.src_node_id,
        partition_id=int(metrics.get("partition-id", -1)),
        update=update,
        num_examples=int(num_examples),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
    )
