"""FedKron: a strategy wrapper that puts compressed adapter updates in front of any Flower strategy.

In the pattern of Flower's own wrappers (``DifferentialPrivacyServerSideFixedClipping`` keeps
``self.strategy`` and delegates): this one picks the round's clients (seeded, by partition),
encodes the downlink, decodes and checks every reply (a bad one is rejected, logged and left
out), and hands the inner strategy what a stock strategy expects: one plain float ``ArrayRecord``
of client weights per valid reply. Aggregation itself (FedAvg, FedAdam, Krum, DP clipping, ...) is
Flower's. Exact aggregation (only the output-side factor travels) and the per-round measurement of
how far per-factor averaging is from averaging the clients' ΔW are properties of this wrapper.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedkron.compression import get_codec
from fedkron.protocol import (
    EVAL_ACCURACY,
    EVAL_LOSS,
    FROZEN_DIGEST,
    METRICS,
    NUM_EXAMPLES,
    PEAK_MEMORY,
    ROUND,
    ROUND_LR,
    TIMINGS,
    TRAIN_LOSS,
    frozen_digest,
    make_broadcast,
    read_eval_reply,
    read_reply,
    sent_names,
)
from fedkron.runconfig.fields import RunConfig
from fedkron.strategies.defences import capped_weights, within_norm_bound
from fedkron.strategies.downlink import Downlink
from fedkron.strategies.edge import EdgeRounds
from fedkron.strategies.exactness import aggregation_error, dense_elements
from fedkron.strategies.registry import privacy_figures
from fedkron.strategies.roster import Roster
from fedkron.strategies.state import load_strategy_state, set_current_arrays, strategy_state

log = logging.getLogger("fedkron")
DEFAULTS = RunConfig().to_record()  # what a client assumes for every setting the broadcast leaves out
MAX_DENSE_FOR_ERROR = 50_000_000  # measuring the aggregation error forms every client's dense ΔW
EVAL_STREAM = 7_777_777  # a seed offset: evaluation samples its clients apart from training


def to_arrayrecord(state: dict[str, torch.Tensor], dtype=np.float32) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().numpy().astype(dtype)) for k, v in state.items()})


def from_arrayrecord(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v.numpy(), dtype=np.float32).copy()) for k, v in record.items()}


class _Given:
    """A Grid that offers the inner strategy exactly the nodes this wrapper chose."""

    def __init__(self, grid: Grid, nodes: list[int]):
        self._grid, self._nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name):
        return getattr(self._grid, name)


class FedKron(Strategy):
    def __init__(
        self,
        strategy: Strategy,
        cfg: RunConfig,
        initial: dict[str, torch.Tensor],
        roles: dict[str, str],
        ledger=None,
        partition_sizes: dict[int, int] | None = None,
        known_partitions=None,
    ):
        """``known_partitions()``: node → (partition, partitions) where the simulation knows it."""
        self.strategy, self.cfg, self.roles = strategy, cfg, roles
        self.sent = sent_names(roles, cfg.aggregation)
        self.expected = {n: initial[n].shape for n in self.sent}
        self.global_state = {k: v.detach().clone() for k, v in initial.items()}
        self.downlink = Downlink(get_codec(cfg.downlink, **cfg.codec_options(cfg.downlink)), cfg.error_feedback)
        self.global_state.update(self.downlink.publish({n: initial[n] for n in self.sent}))  # what clients hold
        self.ledger = ledger  # told what reading a reply reveals (rejected, a node's partition)
        self.roster = Roster(
            cfg.clients,
            cfg.seed,
            wait_for=cfg.clients,
            min_live=cfg.min_replies,
            on_answer=lambda msg, pid: self._note(msg, partition_id=pid),
            known=known_partitions,
        )
        self.edge = EdgeRounds(cfg) if cfg.devices else None  # device profiles and simulated time
        self.measure_error = dense_elements({k: v.shape for k, v in initial.items()}, roles) <= MAX_DENSE_FOR_ERROR
        self.uniform_weights = cfg.dp_noise > 0  # Flower's DP accounting needs equal client weights
        self.clips = cfg.clip_norm > 0 or cfg.adaptive_clipping
        self.partition_sizes = partition_sizes or {}  # what each partition holds, when the server knows
        self._last_norms: list[float] = []  # accepted update norms of the last round
        self.round_stats: dict[int, dict] = {}
        self._asked: dict[int, int] = {}
        self._t0: dict[int, float] = {}

    def _note(self, msg: Message, **values) -> None:
        if self.ledger is not None:
            self.ledger.annotate(msg, **values)

    # --- downlink ---------------------------------------------------------------------------
    def _broadcast(self, server_round: int, config: ConfigRecord) -> RecordDict:
        """This round's broadcast; ``config`` holds the inner strategy's entries (e.g. FedProx's mu)."""
        run = self.cfg.to_record()
        server = {k: v for k, v in dict(config).items() if k not in run}
        server[ROUND] = server_round
        if self.cfg.aggregation == "exact":
            server[FROZEN_DIGEST] = frozen_digest(self.global_state, self.sent)
        if self.cfg.lr_schedule != "constant":
            server[ROUND_LR] = self.cfg.round_lr(server_round)
        return make_broadcast(self.downlink.encoded, run, DEFAULTS, server)

    def _messages(self, content: RecordDict, nodes: Iterable[int], kind: str, server_round: int) -> list[Message]:
        return [Message(content, dst_node_id=n, message_type=kind, group_id=str(server_round)) for n in nodes]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._t0[server_round] = time.perf_counter()
        self.global_state = from_arrayrecord(arrays)
        nodes, k = self.roster.draw(grid, server_round, self.cfg.fraction, self.cfg.over_select)
        self.round_stats[server_round] = {"sample_seconds": time.perf_counter() - self._t0[server_round]}
        if self.edge:
            nodes = self.edge.plan(server_round, nodes, k, self.roster.partition_of)
        if not nodes:  # every sampled device is offline or drops out (Flower's strategies wait for ≥ 1)
            return []
        trained = to_arrayrecord({n: self.global_state[n] for n in self.sent}, np.float64)
        inner = list(self.strategy.configure_train(server_round, trained, config, _Given(grid, nodes)))
        inner_config = next(iter(inner[0].content.config_records.values())) if inner else ConfigRecord()
        messages = self._messages(
            self._broadcast(server_round, inner_config),
            [m.metadata.dst_node_id for m in inner],
            MessageType.TRAIN,
            server_round,
        )
        self._asked[server_round] = len(messages)
        log.info("round %d: sent the global adapter to %d clients", server_round, len(messages))
        return messages

    # --- uplink -----------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failed = max(self._asked.pop(server_round, 0) - len(replies), 0)  # no reply before the timeout
        stats = self.round_stats.setdefault(server_round, {})
        if failed:
            log.warning("round %d: %d clients did not reply in time", server_round, failed)
        valid, pairs, rejected = [], [], 0
        for msg in replies:
            node = msg.metadata.src_node_id
            pid = self.roster.partition_of.get(node, -1)
            if msg.has_error():
                failed += 1
                log.warning("round %d: client %s (partition %s) failed: %s", server_round, node, pid, msg.error.reason)
                continue
            try:
                reply = read_reply(
                    msg, self.expected, (self.cfg.uplink,), max_update_norm=self.cfg.max_update_norm or math.inf
                )
                if reply.partition_id != self.roster.reported(node):
                    raise ValueError(f"reports partition {reply.partition_id}, but holds {self.roster.reported(node)}")
                if self.clips and not any(bool(v.any()) for v in reply.update.values()):
                    raise ValueError(
                        "an all-zero update cannot go through Flower's clipping (it divides by the update norm)"
                    )
                if self.edge:
                    self.edge.check(reply)
            except Exception as err:  # whatever the reason, it rejects this reply only
                rejected += 1
                self._note(msg, status="rejected")
                log.warning("round %d: rejected reply from client %s (partition %s): %s", server_round, node, pid, err)
                continue
            valid.append(reply)
            pairs.append(msg)
        heard, faults = len(valid), failed + rejected
        if self.edge:  # the first k finishers / those before the deadline; late ones count as failed
            valid, pairs, timing = self.edge.settle(server_round, valid, pairs, self.ledger, self._note)
            failed += timing.late
        keep = within_norm_bound([r.norm for r in valid], self._last_norms, self.cfg.norm_bound_factor)
        for i in set(range(len(valid))) - set(keep):
            self._note(pairs[i], status="rejected")
            log.warning(
                "round %d: rejected reply from client %s (partition %s): update norm %.3g is more than "
                "%g × the median norm",
                server_round,
                valid[i].node_id,
                self.roster.partition_of.get(valid[i].node_id),
                valid[i].norm,
                self.cfg.norm_bound_factor,
            )
        outliers = len(valid) - len(keep)
        valid, pairs = [valid[i] for i in keep], [pairs[i] for i in keep]
        rejected += outliers
        stats.update(failed=failed, rejected=rejected, accepted=len(valid))
        if len(valid) < self.cfg.min_replies:
            if self.edge and (heard >= self.cfg.min_replies or not faults):  # the devices, not a fault
                log.warning(
                    "round %d: %d updates in time, %d needed: round abandoned, global adapter unchanged",
                    server_round,
                    len(valid),
                    self.cfg.min_replies,
                )
                stats.update(abandoned=True, fit_seconds=time.perf_counter() - self._t0.pop(server_round))
                return to_arrayrecord(self.global_state), MetricRecord({"accepted": len(valid), "failed": failed})
            raise RuntimeError(
                f"round {server_round}: only {len(valid)} valid replies ({rejected} rejected, "
                f"{failed} failed); at least {self.cfg.min_replies} needed"
            )
        order = sorted(range(len(valid)), key=lambda i: (valid[i].partition_id, valid[i].node_id))
        valid, pairs = [valid[i] for i in order], [pairs[i] for i in order]  # arrival order must not matter
        known = [
            self.partition_sizes.get(self.roster.partition_of.get(r.node_id))  # the server's split only
            if self.roster.shares.get(r.node_id) == self.cfg.clients
            else None
            for r in valid
        ]
        weights = (
            [1.0] * len(valid)
            if self.uniform_weights
            else capped_weights([r.num_examples for r in valid], known, self.cfg.max_weight_share)
        )
        for msg, reply, weight in zip(pairs, valid, weights):  # what a stock strategy expects
            local = {n: self.global_state[n].double() + reply.update[n].double() for n in self.sent}
            msg.content = RecordDict(
                {
                    "arrays": to_arrayrecord(local, np.float64),
                    METRICS: MetricRecord({NUM_EXAMPLES: weight, TRAIN_LOSS: reply.metrics[TRAIN_LOSS]}),
                }
            )
        np.random.seed((self.cfg.seed * 1_000_003 + server_round) % 2**32)  # Flower's DP noise draws from here
        arrays, metrics = self.strategy.aggregate_train(server_round, pairs)
        stats.update(privacy_figures(self.strategy))
        if self.measure_error:
            stats["aggregation_error"] = aggregation_error(
                self.global_state, [r.update for r in valid], weights, self.roles
            )
        new = (
            None
            if arrays is None
            else {n: torch.from_numpy(np.asarray(arrays[n].numpy(), np.float32).copy()) for n in self.sent}
        )
        if new is None:
            log.warning(
                "round %d: %s skipped aggregation; the global adapter is unchanged",
                server_round,
                type(self.strategy).__name__,
            )
        elif not all(bool(torch.isfinite(v).all()) for v in new.values()):
            stats["aggregate_refused"] = True
            log.error(
                "round %d: the aggregate has non-finite values (overflow); it is refused and the global "
                "adapter is unchanged",
                server_round,
            )
        else:
            self.global_state.update(self.downlink.publish(new))
            set_current_arrays(self.strategy, to_arrayrecord({n: self.global_state[n] for n in self.sent}, np.float64))
        self._last_norms = [r.norm for r in valid]
        train_loss = sum(r.metrics[TRAIN_LOSS] * w for r, w in zip(valid, weights)) / sum(weights)
        peaks = [r.metrics[PEAK_MEMORY] for r in valid if PEAK_MEMORY in r.metrics]
        stats.update(
            train_loss=train_loss,
            fit_seconds=time.perf_counter() - self._t0.pop(server_round),
            client_peak_memory_mb=max(peaks) / 1e6 if peaks else None,
            **{k.replace("-", "_"): sum(r.metrics.get(k, 0.0) for r in valid) for k in TIMINGS},
        )
        out = {
            TRAIN_LOSS: train_loss,
            "accepted": len(valid),
            "rejected": rejected,
            "failed": failed,
            NUM_EXAMPLES: sum(weights),
        }
        return to_arrayrecord(self.global_state), MetricRecord(out)

    # --- federated evaluation ---------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.cfg.fraction_evaluate <= 0:
            return []
        self.global_state = from_arrayrecord(arrays)
        nodes = self.roster.sample(grid, server_round + EVAL_STREAM, self.cfg.fraction_evaluate)
        messages = self._messages(self._broadcast(server_round, config), nodes, MessageType.EVALUATE, server_round)
        self._asked[-server_round] = len(messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if self.cfg.fraction_evaluate <= 0:
            return None
        replies = list(replies)
        stats = self.round_stats.setdefault(server_round, {})
        rows, bad = [], max(self._asked.pop(-server_round, 0) - len(replies), 0)
        for msg in replies:
            try:
                if msg.has_error():
                    raise ValueError(msg.error.reason)
                rows.append(read_eval_reply(msg))
            except Exception as err:
                bad += 1
                if not msg.has_error():
                    self._note(msg, status="rejected")
                log.warning(
                    "round %d: evaluation reply from client %s left out: %s",
                    server_round,
                    msg.metadata.src_node_id,
                    err,
                )
        n = sum(r[0] for r in rows)
        if not n:
            return None
        scored = [r for r in rows if r[2] is not None]
        stats.update(
            fed_examples=n,
            fed_loss=sum(r[0] * r[1] for r in rows) / n,
            fed_clients=len(rows),
            fed_left_out=bad,
            fed_accuracy=sum(r[0] * r[2] for r in scored) / sum(r[0] for r in scored) if scored else None,
        )
        return MetricRecord(
            {
                EVAL_LOSS: stats["fed_loss"],
                NUM_EXAMPLES: n,
                **({EVAL_ACCURACY: stats["fed_accuracy"]} if scored else {}),
            }
        )

    # --- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The inner strategy's server state and the broadcast's, for a checkpoint."""
        tensors, values = strategy_state(self.strategy)
        tensors.update({f"downlink/{k}": v for k, v in self.downlink.state_dict().items()})
        return tensors, values

    def load_state_dict(
        self, global_state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], values: dict
    ) -> None:
        """Continue from a checkpoint: the global state clients held, the pending broadcast, the
        inner strategy's state."""
        mine = {k[len("downlink/") :]: v for k, v in tensors.items() if k.startswith("downlink/")}
        load_strategy_state(self.strategy, {k: v for k, v in tensors.items() if not k.startswith("downlink/")}, values)
        self.global_state = {k: global_state[k].clone() for k in self.global_state}
        if mine:
            self.global_state.update(self.downlink.load_state_dict(mine, self.sent))
        else:  # a checkpoint written before the broadcast was kept: publish the state it holds
            self.global_state.update(self.downlink.publish({n: self.global_state[n] for n in self.sent}))

    def summary(self) -> None:
        log.info(
            "FedKron: %s over %s; uplink %s, downlink %s, %d of %d clients a round",
            self.cfg.aggregation,
            type(self.strategy).__name__,
            self.cfg.uplink,
            self.cfg.downlink,
            self.cfg.sampled_per_round(),
            self.cfg.clients,
        )
        self.strategy.summary()
