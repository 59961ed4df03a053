"""Edge devices inside a round (``--devices``): who is reachable, who is heard from, how long it took.

The server side of :mod:`fedkron.devices.timing`, used by the :class:`~fedkron.strategies.wrapper.FedKron`
wrapper through two calls per round:

- :meth:`EdgeRounds.plan` (after sampling): each sampled client gets its device (drawn from the
  mix by (seed, partition) alone, so nothing per client is kept on the server) and its
  online/dropout draw for the round. Only clients that are online and do not drop out are sent
  the broadcast. A dropout is not asked at all: in the model it downloads and then vanishes, so
  its download is charged to the timing table at the round's broadcast size, but the ledger keeps
  only messages that really crossed the wire (and the 2 cores do not train updates that would be
  thrown away). Dropouts are never waited for, so this does not change the round's time.
- :meth:`EdgeRounds.settle` (with the valid replies): each client's simulated time is download
  (its real serialized downlink bytes from the ledger) + compute (its measured ``train-seconds``
  / device speed) + upload (its real reply bytes from the ledger); synchronous FedAvg waits for
  the slowest, ``--over-select`` keeps the first k to finish, ``--round-deadline`` discards later
  ones. Only the clients it keeps are aggregated; late and surplus replies are marked so in the
  ledger.

Measured compute depends on this machine's load (2 cores shared by Ray actors): with a deadline or
over-selection, which clients make it can change between repeated runs near the cut-off.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping
from pathlib import Path

from fedkron.devices.profiles import DeviceMixError, load_mix
from fedkron.devices.timing import TIMING_COLUMNS, RoundPlan, RoundTiming, plan_round, round_time

COMPUTE_KEY = "train-seconds"  # what a client reports as its local training time


def edge_problems(cfg) -> list[str]:
    """Config problems of the edge-device and Ray-resource settings (one line each)."""
    problems = []
    if cfg.devices:
        try:
            load_mix(cfg.devices)
        except DeviceMixError as err:
            problems.append(f"devices: {err}")
    for name in ("over_select", "round_deadline"):
        value = getattr(cfg, name)
        if value < 0:
            problems.append(f"{name.replace('_', '-')} must be ≥ 0 (got {value})")
        elif value > 0 and not cfg.devices:
            problems.append(f"{name.replace('_', '-')} needs --devices (simulated time decides who finishes)")
    if not cfg.client_cpus > 0:
        problems.append(f"client-cpus must be > 0 (got {cfg.client_cpus})")
    if cfg.client_gpus < 0:
        problems.append(f"client-gpus must be ≥ 0 (got {cfg.client_gpus})")
    if cfg.max_actors < 0:
        problems.append(f"max-actors must be ≥ 0 (got {cfg.max_actors}; 0 = as many as the CPUs allow)")
    if cfg.ray_address and cfg.max_actors:
        problems.append(
            "max-actors cannot be combined with --ray-address (the cluster's CPUs decide; use --client-cpus)"
        )
    if cfg.ray_address and not cfg.ray_address.strip():
        problems.append("ray-address is blank (give host:port of `ray start --head`, or leave it out)")
    return problems


def wire_bytes(ledger, server_round: int, direction: str) -> dict[int, int]:
    """Serialized bytes of this round's training messages per node, as the ledger counted them."""
    return {
        r.node_id: r.serialized
        for r in ledger.rows
        if r.round == server_round and r.direction == direction and r.kind == "train"
    }


class EdgeRounds:
    def __init__(self, cfg):
        self.mix, self.seed = load_mix(cfg.devices), cfg.seed
        self.over_select = cfg.over_select
        self.deadline = cfg.round_deadline or None
        self._pending: dict[int, tuple[RoundPlan, dict[int, int], int]] = {}  # round → plan, slot → node, k
        self.timings: dict[int, RoundTiming] = {}  # settled rounds not yet written out

    def plan(self, server_round: int, nodes: list[int], k: int, partition_of: Mapping[int, int]) -> list[int]:
        """The sampled nodes to send the broadcast to: online and not dropping out this round."""
        slots = {partition_of[n]: n for n in nodes}
        profiles = {s: self.mix.profile_for(s, self.seed) for s in slots}
        plan = plan_round(profiles, sorted(slots), self.seed, server_round)
        self._pending[server_round] = (plan, slots, k)
        keep = set(plan.to_train)
        return [n for n in nodes if partition_of[n] in keep]

    def check(self, reply) -> None:
        if COMPUTE_KEY not in reply.metrics:
            raise ValueError(f"reports no {COMPUTE_KEY} (simulated time with --devices needs it)")

    def settle(
        self, server_round: int, valid: list, pairs: list, ledger, note: Callable[..., None]
    ) -> tuple[list, list, RoundTiming]:
        """The replies the round keeps (first ``k`` finishers / those before the deadline) and its
        timing. Clients sent the broadcast without a valid reply (failed, rejected) are left out of
        the timing; they are counted as failed or rejected already."""
        plan, slots, k = self._pending.pop(server_round)
        got = {r.partition_id: r for r in valid}
        plan = plan._replace(clients=tuple(c for c in plan.clients if not c.online or c.dropped or c.client in got))
        down_of, up_of = wire_bytes(ledger, server_round, "down"), wire_bytes(ledger, server_round, "up")
        down = {s: down_of[n] for s, n in slots.items() if n in down_of}
        broadcast = max(down.values(), default=None)  # what a dropout downloaded (same content)
        for s in plan.dropped:
            if broadcast is not None:
                down[s] = broadcast
        timing = round_time(
            plan,
            down,
            {s: up_of[slots[s]] for s in got},
            {s: r.metrics[COMPUTE_KEY] for s, r in got.items()},
            deadline=self.deadline,
            over_select_k=k if self.over_select else None,
        )
        status = {row.client: row.status for row in timing.rows}
        for msg, r in zip(pairs, valid):
            if status[r.partition_id] != "ok":
                note(msg, status=status[r.partition_id])
        keep = set(timing.aggregated)
        kept = [(r, m) for r, m in zip(valid, pairs) if r.partition_id in keep]
        self.timings[server_round] = timing
        return [r for r, _ in kept], [m for _, m in kept], timing


def timing_row(timing: RoundTiming | None, total_before: float) -> dict:
    """A metrics row's simulated-time columns: this round's seconds, the run's total so far, the
    critical path's transfer / compute / wait split and the clients not heard from."""
    if timing is None:  # round 0 (the initial model) or a round that sent nothing
        return {
            "sim_seconds": 0.0,
            "sim_seconds_total": total_before,
            "sim_transfer_seconds": 0.0,
            "sim_compute_seconds": 0.0,
            "sim_wait_seconds": 0.0,
            "offline": 0,
            "dropped": 0,
            "late": 0,
            "surplus": 0,
        }
    return {
        "sim_seconds": timing.sim_seconds,
        "sim_seconds_total": total_before + timing.sim_seconds,
        "sim_transfer_seconds": timing.transfer_seconds,
        "sim_compute_seconds": timing.compute_seconds,
        "sim_wait_seconds": timing.wait_seconds,
        "offline": timing.offline,
        "dropped": timing.dropped,
        "late": timing.late,
        "surplus": timing.surplus,
    }


def keep_timing_rows(path: Path, last_round: int) -> None:
    """The timing table of rounds 1..``last_round`` only (a resumed run redoes the later ones; a
    fresh run, ``last_round`` 0, starts with none)."""
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh)][1:]
    keep = [r for r in rows if r and int(r[0]) <= last_round]
    if not keep:
        path.unlink()
        return
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        csv.writer(fh).writerows([TIMING_COLUMNS, *keep])
    tmp.replace(path)
