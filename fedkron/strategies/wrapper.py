"""FedKron: a strategy wrapper that puts compressed adapter updates in front of any Flower strategy.

In the pattern of Flower's own wrappers (``DifferentialPrivacyServerSideFixedClipping`` keeps
``self.strategy`` and delegates): this one picks the round's clients (seeded, by partition),
encodes the downlink, decodes and checks every reply (a bad one is rejected, logged and left
out), and hands the inner strategy what a stock strategy expects: one plain float ``ArrayRecord``
of client weights per valid reply. Aggregation itself (FedAvg, FedAdam, Krum, DP clipping, ...) is
Flower's. Exact aggregation (only the output-side factor travels), alternating aggregation (one
factor a round goes up, all come down) and the per-round measurement of how far per-factor
averaging is from averaging the clients' ΔW are properties of this wrapper.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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
    ValidReply,
    broadcast_names,
    frozen_digest,
    make_broadcast,
    read_eval_reply,
    read_reply,
    sent_names,
)
from fedkron.runconfig.fields import RunConfig
from fedkron.strategies.defences import NormBound, capped_weights, eval_weights, state_norm
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
NORM_REFERENCE = "norm-reference"  # the norm bound's reference, in a checkpoint's values


def to_arrayrecord(state: dict[str, torch.Tensor], dtype=np.float32) -> ArrayRecord:
    return ArrayRecord({k: Array(v.detach().cpu().numpy().astype(dtype)) for k, v in state.items()})


def from_arrayrecord(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v.numpy(), dtype=np.float32).copy()) for k, v in record.items()}


@contextmanager
def numpy_global_seed(seed: int) -> Iterator[None]:
    """Flower's DP strategies draw their noise from numpy's global (legacy) generator and take no
    generator of their own: for the call only, that state is an explicitly seeded
    ``RandomState(seed)``'s, so the noise depends on the run's seed and round alone; the caller's
    state is given back after, so nothing else's stream changes."""
    saved = np.random.get_state()
    np.random.set_state(np.random.RandomState(seed).get_state())
    try:
        yield
    finally:
        np.random.set_state(saved)


def first_reply_per_node(replies: list[Message]) -> tuple[list[Message], list[Message]]:
    """(the first reply of each node, every later one): a node's second reply in a round would
    count its update twice. Error replies are all kept (one Flower makes for an unreachable node
    may name no node)."""
    seen: set[int] = set()
    first, again = [], []
    for msg in replies:
        node = msg.metadata.src_node_id
        if not msg.has_error() and node in seen:
            again.append(msg)
            continue
        if not msg.has_error():
            seen.add(node)
        first.append(msg)
    return first, again


@dataclass
class _Round:
    """What one round's aggregation carries from step to step: the valid replies with their
    messages, the counts, the weights."""

    number: int
    stats: dict
    started: float | None  # perf_counter() when the round was configured
    valid: list[ValidReply] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # the reply message of each valid reply
    failed: int = 0
    rejected: int = 0
    heard: int = 0  # valid replies before the deadline and the norm bound
    weights: list[float] = field(default_factory=list)

    def accept(self, reply: ValidReply, msg: Message) -> None:
        self.valid.append(reply)
        self.messages.append(msg)

    def keep(self, indices: list[int]) -> None:
        """Keep these valid replies, in this order."""
        self.valid = [self.valid[i] for i in indices]
        self.messages = [self.messages[i] for i in indices]

    def seconds(self) -> float | None:
        return None if self.started is None else time.perf_counter() - self.started


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
        self.shapes = {n: initial[n].shape for n in roles}
        self.broadcast = broadcast_names(roles, cfg.aggregation)  # what every broadcast carries
        self.global_state = {k: v.detach().clone() for k, v in initial.items()}
        self.downlink = Downlink(get_codec(cfg.downlink, **cfg.codec_options(cfg.downlink)), cfg.error_feedback)
        self.global_state.update(self.downlink.publish({n: initial[n] for n in self.broadcast}))  # what clients hold
        self.ledger = ledger  # told what reading a reply reveals (rejected, a node's partition)
        self._for_round(1)
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
        self.norm_bound = NormBound(cfg.norm_bound_factor, anchor=state_norm(initial))
        self.round_stats: dict[int, dict] = {}
        self._asked: dict[int, int] = {}
        self._t0: dict[int, float] = {}

    def _for_round(self, server_round: int) -> None:
        """What clients train and send up in ``server_round`` (``alternating``: a different factor
        each round, from the round number alone, as the clients compute it): the names the inner
        strategy, the defences and the reply checks see."""
        self.sent = sent_names(self.roles, self.cfg.aggregation, server_round)
        self.expected = {n: self.shapes[n] for n in self.sent}
        if self.ledger is not None:
            self.ledger.expect(self.expected)  # it reads a reply's payload within read_reply's limits

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
        self._for_round(server_round)
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
        """decode → defend → delegate (the inner strategy aggregates) → record."""
        rnd = _Round(server_round, self.round_stats.setdefault(server_round, {}), self._t0.pop(server_round, None))
        self._for_round(server_round)
        self._decode(rnd, replies)
        self._defend(rnd)
        if len(rnd.valid) < self.cfg.min_replies:
            return self._too_few(rnd)
        return self._record(rnd, self._delegate(rnd))

    def _decode(self, rnd: _Round, replies: Iterable[Message]) -> None:
        """Read and check every reply; a bad one is rejected (logged, marked in the ledger)."""
        replies, again = first_reply_per_node(list(replies))
        rnd.failed = max(self._asked.pop(rnd.number, 0) - len(replies), 0)  # no reply before the timeout
        if rnd.failed:
            log.warning("round %d: %d clients did not reply in time", rnd.number, rnd.failed)
        for msg in again:
            self._reject(rnd, msg, "a second reply from this node in one round (the first is kept)")
        for msg in replies:
            if msg.has_error():
                rnd.failed += 1
                log.warning(
                    "round %d: client %s (partition %s) failed: %s",
                    rnd.number,
                    msg.metadata.src_node_id,
                    self.roster.partition_of.get(msg.metadata.src_node_id, -1),
                    msg.error.reason,
                )
                continue
            try:
                rnd.accept(self._check(msg), msg)
            except Exception as err:  # whatever the reason, it rejects this reply only
                self._reject(rnd, msg, err)
        rnd.heard = len(rnd.valid)

    def _check(self, msg: Message) -> ValidReply:
        """One reply decoded and checked against what its node may send."""
        node = msg.metadata.src_node_id
        reply = read_reply(msg, self.expected, (self.cfg.uplink,), max_update_norm=self.cfg.max_update_norm or math.inf)
        if reply.partition_id != self.roster.reported(node):
            raise ValueError(f"reports partition {reply.partition_id}, but holds {self.roster.reported(node)}")
        if self.clips and not any(bool(v.any()) for v in reply.update.values()):
            raise ValueError("an all-zero update cannot go through Flower's clipping (it divides by the update norm)")
        if self.edge:
            self.edge.check(reply)
        return reply

    def _reject(self, rnd: _Round, msg: Message, reason) -> None:
        rnd.rejected += 1
        self._note(msg, status="rejected")
        node = msg.metadata.src_node_id
        log.warning(
            "round %d: rejected reply from client %s (partition %s): %s",
            rnd.number,
            node,
            self.roster.partition_of.get(node, -1),
            reason,
        )

    def _defend(self, rnd: _Round) -> None:
        """The edge deadline (late replies count as failed), then the norm bound."""
        if self.edge:  # the first k finishers / those before the deadline
            rnd.valid, rnd.messages, timing = self.edge.settle(
                rnd.number, rnd.valid, rnd.messages, self.ledger, self._note
            )
            rnd.failed += timing.late
        keep = set(self.norm_bound.keep([r.norm for r in rnd.valid]))
        for i, (reply, msg) in enumerate(zip(rnd.valid, rnd.messages)):
            if i not in keep:
                self._reject(
                    rnd,
                    msg,
                    f"update norm {reply.norm:.3g} is more than {self.cfg.norm_bound_factor:g} × the reference "
                    f"norm {self.norm_bound.reference:.3g} (the median of the round's norms and the last reference)",
                )
        rnd.keep(sorted(keep))
        rnd.stats.update(failed=rnd.failed, rejected=rnd.rejected, accepted=len(rnd.valid))

    def _too_few(self, rnd: _Round) -> tuple[ArrayRecord, MetricRecord]:
        """Fewer valid replies than ``--min-replies``: an edge round is abandoned, otherwise the run stops."""
        faults = rnd.failed + rnd.rejected
        if self.edge and (rnd.heard >= self.cfg.min_replies or not faults):  # the devices, not a fault
            log.warning(
                "round %d: %d updates in time, %d needed: round abandoned, global adapter unchanged",
                rnd.number,
                len(rnd.valid),
                self.cfg.min_replies,
            )
            rnd.stats.update(abandoned=True, fit_seconds=rnd.seconds())
            return to_arrayrecord(self.global_state), MetricRecord({"accepted": len(rnd.valid), "failed": rnd.failed})
        raise RuntimeError(
            f"round {rnd.number}: only {len(rnd.valid)} valid replies ({rnd.rejected} rejected, "
            f"{rnd.failed} failed); at least {self.cfg.min_replies} needed"
        )

    def _delegate(self, rnd: _Round) -> dict[str, torch.Tensor] | None:
        """Hand the inner strategy what a stock strategy expects and return its aggregate (None: skipped)."""
        rnd.keep(sorted(range(len(rnd.valid)), key=lambda i: (rnd.valid[i].partition_id, rnd.valid[i].node_id)))
        rnd.weights = self._weights(rnd.valid)  # arrival order must not matter: sorted by partition
        for msg, reply, weight in zip(rnd.messages, rnd.valid, rnd.weights):
            local = {n: self.global_state[n].double() + reply.update[n].double() for n in self.sent}
            msg.content = RecordDict(
                {
                    "arrays": to_arrayrecord(local, np.float64),
                    METRICS: MetricRecord({NUM_EXAMPLES: weight, TRAIN_LOSS: reply.metrics[TRAIN_LOSS]}),
                }
            )
        with numpy_global_seed((self.cfg.seed * 1_000_003 + rnd.number) % 2**32):  # Flower's DP noise
            arrays, _ = self.strategy.aggregate_train(rnd.number, rnd.messages)
        rnd.stats.update(privacy_figures(self.strategy))
        if self.measure_error:
            rnd.stats["aggregation_error"] = aggregation_error(
                self.global_state, [r.update for r in rnd.valid], rnd.weights, self.roles
            )
        if arrays is None:
            return None
        return {n: torch.from_numpy(np.asarray(arrays[n].numpy(), np.float32).copy()) for n in self.sent}

    def _weights(self, valid: list[ValidReply]) -> list[float]:
        """Aggregation weights: example counts capped at what the server knows a partition holds."""
        if self.uniform_weights:
            return [1.0] * len(valid)
        known = [
            self.partition_sizes.get(self.roster.partition_of.get(r.node_id))  # the server's split only
            if self.roster.shares.get(r.node_id) == self.cfg.clients
            else None
            for r in valid
        ]
        return capped_weights([r.num_examples for r in valid], known, self.cfg.max_weight_share)

    def _record(self, rnd: _Round, new: dict[str, torch.Tensor] | None) -> tuple[ArrayRecord, MetricRecord]:
        """Publish the aggregate (unless skipped or non-finite) and the round's figures."""
        if new is None:
            log.warning(
                "round %d: %s skipped aggregation; the global adapter is unchanged",
                rnd.number,
                type(self.strategy).__name__,
            )
        elif not all(bool(torch.isfinite(v).all()) for v in new.values()):
            rnd.stats["aggregate_refused"] = True
            log.error(
                "round %d: the aggregate has non-finite values (overflow); it is refused and the global "
                "adapter is unchanged",
                rnd.number,
            )
        else:
            # all broadcast factors are published again (alternating: those not trained this round
            # unchanged), so the next broadcast is the whole state
            self.global_state.update(
                self.downlink.publish({**{n: self.global_state[n] for n in self.broadcast}, **new})
            )
            set_current_arrays(self.strategy, to_arrayrecord({n: self.global_state[n] for n in self.sent}, np.float64))
        valid, weights = rnd.valid, rnd.weights
        train_loss = sum(r.metrics[TRAIN_LOSS] * w for r, w in zip(valid, weights)) / sum(weights)
        peaks = [r.metrics[PEAK_MEMORY] for r in valid if PEAK_MEMORY in r.metrics]
        rnd.stats.update(
            train_loss=train_loss,
            fit_seconds=rnd.seconds(),
            client_peak_memory_mb=max(peaks) / 1e6 if peaks else None,
            **{k.replace("-", "_"): sum(r.metrics.get(k, 0.0) for r in valid) for k in TIMINGS},
        )
        out = {
            TRAIN_LOSS: train_loss,
            "accepted": len(valid),
            "rejected": rnd.rejected,
            "failed": rnd.failed,
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
        """Example-weighted federated scores; weights capped as in training (no client scores more
        than ``--eval-samples`` rows, none gets more than ``--max-weight-share`` of the total)."""
        if self.cfg.fraction_evaluate <= 0:
            return None
        replies, again = first_reply_per_node(list(replies))
        rows, bad = [], max(self._asked.pop(-server_round, 0) - len(replies), 0) + len(again)
        for msg in again:
            self._note(msg, status="rejected")
            log.warning(
                "round %d: a second evaluation reply from client %s left out", server_round, msg.metadata.src_node_id
            )
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
        if not rows:
            return None
        weights = eval_weights([r[0] for r in rows], self.cfg.eval_samples, self.cfg.max_weight_share)
        return self._eval_metrics(self.round_stats.setdefault(server_round, {}), rows, weights, bad)

    @staticmethod
    def _eval_metrics(stats: dict, rows: list[tuple], weights: list[float], bad: int) -> MetricRecord:
        n = sum(weights)
        scored = [(w, r[2]) for w, r in zip(weights, rows) if r[2] is not None]
        stats.update(
            fed_examples=n,
            fed_loss=sum(w * r[1] for w, r in zip(weights, rows)) / n,
            fed_clients=len(rows),
            fed_left_out=bad,
            fed_accuracy=sum(w * a for w, a in scored) / sum(w for w, _ in scored) if scored else None,
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
        values[NORM_REFERENCE] = self.norm_bound.reference
        return tensors, values

    def load_state_dict(
        self, global_state: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], values: dict
    ) -> None:
        """Continue from a checkpoint: the global state clients held, the pending broadcast, the
        inner strategy's state."""
        mine = {k[len("downlink/") :]: v for k, v in tensors.items() if k.startswith("downlink/")}
        values = dict(values)
        if NORM_REFERENCE in values:  # a checkpoint written before the reference was kept: the anchor
            self.norm_bound.reference = float(values.pop(NORM_REFERENCE))
        load_strategy_state(self.strategy, {k: v for k, v in tensors.items() if not k.startswith("downlink/")}, values)
        self.global_state = {k: global_state[k].clone() for k in self.global_state}
        if mine:
            self.global_state.update(self.downlink.load_state_dict(mine, self.broadcast))
        else:  # a checkpoint written before the broadcast was kept: publish the state it holds
            self.global_state.update(self.downlink.publish({n: self.global_state[n] for n in self.broadcast}))

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
