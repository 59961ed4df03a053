"""PerFactorFedAvg: Flower's FedAvg with encoded broadcasts, validated replies and a ledger.

FedAvg's built-in aggregation would average the uint8 codes of a quantized payload as numbers, so
this strategy decodes every reply itself, checks it, averages the decoded *updates* factor by factor
(weighted by examples) and applies the mean to the global factors with a server learning rate.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flwr.common.serde import message_to_proto

from fedkron.compression import PayloadError, get_codec, message_byte_figures, to_records
from fedkron.config import RunConfig
from fedkron.strategies.aggregate import AGGREGATORS, clip_update, trimmed_mean
from fedkron.strategies.server_opt import ServerOptimizer
from fedkron.strategies.exactness import (FROZEN_DIGEST_KEY, aggregation_error, dense_elements, exact_names,
                                          frozen_digest)
from fedkron.strategies.ledger import Ledger, LedgerRow
from fedkron.strategies.validation import (
    ARRAYS_KEY,
    CONFIG_KEY,
    MANIFEST_KEY,
    RejectedReply,
    ValidReply,
    decode_reply,
)

log = logging.getLogger("fedkron")
MAX_DENSE_FOR_ERROR = 50_000_000


def state_to_arrayrecord(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in state.items()})


def arrayrecord_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.numpy().copy()) for k, v in record.items()}


class PerFactorFedAvg(FedAvg):
    """Per-factor FedAvg over encoded adapter updates, with a communication ledger."""

    def __init__(self, cfg: RunConfig, expected: dict[str, torch.Size], ledger: Ledger | None = None,
                 roles: dict[str, str] | None = None):
        super().__init__(
            fraction_train=cfg.fraction,
            fraction_evaluate=0.0,  # evaluation is central, on the server
            min_train_nodes=1,
            min_available_nodes=cfg.clients,
        )
        self.cfg = cfg
        self.roles = roles or {}
        # Measuring the aggregation error forms every dense ΔW per client: fine for encoders of
        # tens of millions of weights, skipped for LLM-sized adapters where it would dominate a round.
        self.measure_error = bool(self.roles) and dense_elements(expected, self.roles) <= MAX_DENSE_FOR_ERROR
        if cfg.aggregation == "exact":  # only B1 and full modules travel; A, B2 stay at their seeded init
            expected = {n: expected[n] for n in exact_names(self.roles)}
        self.expected = dict(expected)
        self.ledger = ledger if ledger is not None else Ledger()
        self.downlink = get_codec(cfg.downlink, **cfg.codec_options())
        self.allowed_codecs = (cfg.quant,)
        self.server_opt = ServerOptimizer(cfg.server_opt, lr=cfg.server_lr)
        self.partition_of: dict[int, int] = {}
        self._sent: dict[int, int] = {}
        self.global_state: dict[str, torch.Tensor] = {}
        self.round_stats: dict[int, dict[str, float]] = {}

    # --- sampling ---------------------------------------------------------------------------
    def _discover_partitions(self, grid: Grid) -> None:
        """Ask nodes not seen before for their partition id (a tiny query message each)."""
        unknown = [n for n in grid.get_node_ids() if n not in self.partition_of]
        if not unknown:
            return
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in unknown]
        for m in msgs:
            self._record(0, "down", "query", m, m.metadata.dst_node_id, -1)
        for reply in grid.send_and_receive(msgs, timeout=600):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %s did not answer the partition query: %s", node, reply.error.reason)
                continue
            pid = int(reply.content["info"]["partition-id"])
            self.partition_of[node] = pid
            self._record(0, "up", "query", reply, node, pid)

    def _sample(self, grid: Grid, server_round: int) -> list[int]:
        """Seeded choice of partitions per round, so runs with one seed train the same clients."""
        from flwr.serverapp.strategy.strategy_utils import sample_nodes

        # Wait for every expected node before the first round; later rounds go on with whoever is
        # still connected (a node that died is not waited for), as long as min-replies can be met.
        wait_for = self.min_available_nodes if not self.partition_of else self.cfg.min_replies
        sample_nodes(grid, wait_for, 1)
        self._discover_partitions(grid)
        live = sorted(grid.get_node_ids(), key=lambda n: (self.partition_of.get(n, 10**9), n))
        live = [n for n in live if n in self.partition_of]
        k = max(1, int(round(len(live) * self.fraction_train)))
        rng = random.Random(self.cfg.seed * 100_003 + server_round)
        return sorted(rng.sample(live, k), key=lambda n: self.partition_of[n])

    # --- round ------------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._sample(grid, server_round)
        content = self.broadcast(server_round, arrayrecord_to_state(arrays), config)
        messages = [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]
        self._sent[server_round] = len(messages)
        for m in messages:
            node = m.metadata.dst_node_id
            self._record(server_round, "down", "train", m, node, self.partition_of.get(node, -1))
        log.info("round %d: sent global adapter to %d clients", server_round, len(messages))
        return messages

    def broadcast(self, server_round: int, state: dict[str, torch.Tensor], config: ConfigRecord) -> RecordDict:
        """What every sampled client receives: the global factors (downlink codec) and the run config."""
        extra = {}
        if self.cfg.aggregation == "exact":  # A and B2 stay at the seeded init clients build themselves
            extra[FROZEN_DIGEST_KEY] = frozen_digest(state, list(self.expected))
            state = {name: state[name] for name in self.expected}
        arr, manifest = to_records(self.downlink.encode(state))
        config = ConfigRecord({**self.cfg.to_record(), **dict(config), **extra, "server-round": server_round})
        return RecordDict({ARRAYS_KEY: arr, MANIFEST_KEY: manifest, CONFIG_KEY: config})

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid: list[ValidReply] = []
        replies = list(replies)
        failed = max(self._sent.get(server_round, 0) - len(replies), 0)  # no reply before the timeout
        if failed:
            log.warning("round %d: %d clients did not reply in time", server_round, failed)
        rejected = 0
        for msg in replies:
            node = msg.metadata.src_node_id
            pid = self.partition_of.get(node, -1)
            if msg.has_error():
                failed += 1
                log.warning("round %d: client %s (partition %s) failed: %s", server_round, node, pid, msg.error.reason)
                continue
            try:
                reply = decode_reply(msg, self.expected, self.allowed_codecs,
                                     max_update_norm=self.cfg.max_update_norm or math.inf)
            except RejectedReply as err:
                rejected += 1
                self._record(server_round, "up", "train", msg, node, pid, status="rejected")
                log.warning("round %d: rejected reply from client %s (partition %s): %s", server_round, node, pid, err)
                continue
            self._record(server_round, "up", "train", msg, node, pid)
            valid.append(reply)

        stats = self.round_stats[server_round] = {"failed": failed, "rejected": rejected, "accepted": len(valid)}
        if len(valid) < self.cfg.min_replies:
            raise RuntimeError(
                f"round {server_round}: only {len(valid)} valid replies "
                f"({rejected} rejected, {failed} failed); at least {self.cfg.min_replies} needed"
            )
        valid.sort(key=lambda r: (r.partition_id, r.node_id))  # arrival order must not change sums
        weights = [r.num_examples for r in valid]
        updates = [clip_update(r.update, self.cfg.clip_norm) for r in valid]
        mean_update = self._aggregate(updates, weights)
        global_state = self.global_state
        if self.measure_error:
            stats["aggregation_error"] = aggregation_error(global_state, updates, weights, self.roles)
        full_update = {k: mean_update.get(k, torch.zeros_like(v)) for k, v in global_state.items()}
        new_state = self.server_opt.step(global_state, full_update)
        self.global_state = new_state
        stats["client_seconds"] = sum(r.metrics.get("client-seconds", 0.0) for r in valid)
        stats["train_seconds"] = sum(r.metrics.get("train-seconds", 0.0) for r in valid)
        train_loss = sum(r.metrics.get("train-loss", 0.0) * w for r, w in zip(valid, weights)) / sum(weights)
        metrics = MetricRecord(
            {"train-loss": train_loss, "accepted": len(valid), "rejected": rejected, "failed": failed,
             "num-examples": sum(weights)}
        )
        return state_to_arrayrecord(new_state), metrics

    def _aggregate(self, updates: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
        if self.cfg.aggregation == "trimmed-mean":
            return trimmed_mean(updates, weights, trim=self.cfg.trim_fraction)
        return AGGREGATORS[self.cfg.aggregation](updates, weights)

    # --- plumbing ---------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord, *args, **kwargs):
        self.global_state = arrayrecord_to_state(initial_arrays)
        return super().start(grid, initial_arrays, *args, **kwargs)

    def _record(self, rnd: int, direction: str, kind: str, msg: Message, node: int, pid: int, status: str = "ok"):
        try:
            figures = message_byte_figures(msg)
        except PayloadError:  # a reply whose manifest does not even parse: count what arrived
            figures = {"payload": 0, "serialized": message_to_proto(msg).ByteSize(),
                       "count_bytes": sum(r.count_bytes() for r in msg.content.array_records.values())}
        self.ledger.add(LedgerRow(round=rnd, direction=direction, kind=kind, node_id=int(node),
                                  partition_id=int(pid), status=status, **figures))

    def summary(self) -> None:
        log.info("PerFactorFedAvg: uplink %s, downlink %s, server-lr %s, fraction %s",
                 self.cfg.quant, self.cfg.downlink, self.cfg.server_lr, self.fraction_train)
