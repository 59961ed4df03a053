"""Simulated wall time of a round from real bytes, measured compute seconds and device profiles.

Two steps, both pure. ``plan_round`` decides, before anyone trains, which sampled clients are
offline and which will drop out (draws seeded by (seed, round, client) only), so the caller can
skip training them. ``round_time`` then turns each client's real downlink/uplink bytes and measured
compute seconds into download + compute + upload times and the round's simulated duration:
synchronous FedAvg waits for the slowest survivor; ``over_select_k`` keeps the first k to finish
(Bonawitz et al. 2019); ``deadline`` marks later clients ``late`` and caps the round there.
Only ``RoundTiming.aggregated`` clients' updates would reach the server.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fedkron.devices.profiles import DeviceProfile, _nonneg

_PLAN_TAG = 0x9A7E  # separates per-round draws from the profile draws in devices.py


class PlannedClient(NamedTuple):
    client: int
    profile: DeviceProfile
    online: bool
    dropped: bool  # online, downloads, then drops out before its upload completes


class RoundPlan(NamedTuple):
    seed: int
    round: int
    clients: tuple[PlannedClient, ...]

    @property
    def offline(self) -> list[int]:
        return [c.client for c in self.clients if not c.online]

    @property
    def dropped(self) -> list[int]:
        return [c.client for c in self.clients if c.dropped]

    @property
    def to_train(self) -> list[int]:
        """Clients whose update can arrive: online and not dropping out (train only these)."""
        return [c.client for c in self.clients if c.online and not c.dropped]


def plan_round(
    profiles: Sequence[DeviceProfile] | Mapping[int, DeviceProfile],
    sampled_clients: Iterable[int],
    seed: int,
    round: int,
) -> RoundPlan:
    """Online/dropout draws for each sampled client; ``profiles[client]`` is its device."""
    rows = []
    for client in sampled_clients:
        profile = profiles[client]
        rng = np.random.default_rng(
            [_PLAN_TAG, _nonneg(seed, "seed"), _nonneg(round, "round"), _nonneg(client, "client")]
        )
        u_online, u_drop = rng.random(2)  # both always drawn: streams do not shift with outcomes
        online = bool(u_online < profile.availability)
        rows.append(PlannedClient(int(client), profile, online, online and bool(u_drop < profile.dropout)))
    return RoundPlan(int(seed), int(round), tuple(rows))


class ClientTiming(NamedTuple):
    client: int
    kind: str
    status: str  # ok | offline | dropped | late | surplus (finished, but after the first k)
    online: bool
    dropped: bool
    late: bool
    download_s: float
    compute_s: float
    upload_s: float
    total_s: float


class RoundTiming(NamedTuple):
    rows: tuple[ClientTiming, ...]
    sim_seconds: float  # the round's simulated duration
    transfer_seconds: float  # critical path: download + upload of the client that closed the round
    compute_seconds: float  # critical path: its compute
    wait_seconds: float  # the rest: waiting for a deadline that no aggregated client needed
    critical_client: int | None
    aggregated: tuple[int, ...]  # in finishing order: only these updates reach the server
    offline: int
    dropped: int
    late: int
    surplus: int

    def metrics(self) -> dict:
        """Per-round figures for metrics.jsonl (``sim_seconds`` is what ``time_to_accuracy`` sums)."""
        return {
            "sim_seconds": self.sim_seconds,
            "sim_transfer_seconds": self.transfer_seconds,
            "sim_compute_seconds": self.compute_seconds,
            "sim_wait_seconds": self.wait_seconds,
            "sim_aggregated": len(self.aggregated),
            "sim_offline": self.offline,
            "sim_dropped": self.dropped,
            "sim_late": self.late,
            "sim_surplus": self.surplus,
        }


def transfer_seconds(num_bytes: float, bps: float, latency_s: float) -> float:
    """Bytes over a link: serialisation at the link rate plus one one-way latency."""
    return num_bytes * 8.0 / bps + latency_s


def _get(table: Mapping[int, float], client: int, name: str) -> float:
    if client not in table:
        raise KeyError(f"round_time: {name} has no entry for client {client} (it is online and did not drop out)")
    value = float(table[client])
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"round_time: {name}[{client}] must be a finite number >= 0, got {table[client]!r}")
    return value


def _client_times(
    plan: RoundPlan,
    down_bytes: Mapping[int, float],
    up_bytes: Mapping[int, float],
    compute_seconds: Mapping[int, float],
) -> dict[int, tuple]:
    """client → (planned client, status, download s, compute s, upload s) before the deadline is applied."""
    timed: dict[int, tuple] = {}
    for c in plan.clients:
        p = c.profile
        if not c.online:
            timed[c.client] = (c, "offline", 0.0, 0.0, 0.0)
        elif c.dropped:
            down = transfer_seconds(down_bytes[c.client], p.down_bps, p.latency_s) if c.client in down_bytes else 0.0
            timed[c.client] = (c, "dropped", down, 0.0, 0.0)
        else:
            timed[c.client] = (
                c,
                "ok",
                transfer_seconds(_get(down_bytes, c.client, "down_bytes"), p.down_bps, p.latency_s),
                _get(compute_seconds, c.client, "compute_seconds") / p.speed,
                transfer_seconds(_get(up_bytes, c.client, "up_bytes"), p.up_bps, p.latency_s),
            )
    return timed


def round_time(
    plan: RoundPlan,
    down_bytes: Mapping[int, float],
    up_bytes: Mapping[int, float],
    compute_seconds: Mapping[int, float],
    deadline: float | None = None,
    over_select_k: int | None = None,
) -> RoundTiming:
    """Per-client times and the round's simulated duration (see the module docstring).

    Dropped clients are not waited for; their download (if its bytes are given) is still reported.
    """
    if deadline is not None and not deadline > 0:
        raise ValueError(f"round_time: deadline must be > 0 seconds, got {deadline!r}")
    if over_select_k is not None and over_select_k < 1:
        raise ValueError(f"round_time: over_select_k must be >= 1, got {over_select_k!r}")
    timed = _client_times(plan, down_bytes, up_bytes, compute_seconds)
    finishers = sorted((sum(t[2:]), client) for client, t in timed.items() if t[1] == "ok")
    in_time = [(total, client) for total, client in finishers if deadline is None or total <= deadline]
    for _, client in finishers[len(in_time) :]:
        timed[client] = (timed[client][0], "late", *timed[client][2:])
    kept = in_time if over_select_k is None else in_time[:over_select_k]
    for _, client in in_time[len(kept) :]:
        timed[client] = (timed[client][0], "surplus", *timed[client][2:])
    closed_early = over_select_k is not None and len(kept) == over_select_k
    if kept and (closed_early or len(in_time) == len(finishers)):
        sim = kept[-1][0]  # the last aggregated client closes the round
    else:
        sim = deadline if deadline is not None else (kept[-1][0] if kept else 0.0)
    critical = kept[-1][1] if kept else None
    _, _, d, comp, u = timed[critical] if critical is not None else (None, None, 0.0, 0.0, 0.0)
    rows = tuple(
        ClientTiming(
            client,
            t[0].profile.kind,
            t[1],
            t[0].online,
            t[0].dropped,
            t[1] == "late",
            t[2],
            t[3],
            t[4],
            t[2] + t[3] + t[4],
        )
        for client, t in timed.items()
    )
    counts = {s: sum(r.status == s for r in rows) for s in ("offline", "dropped", "late", "surplus")}
    return RoundTiming(rows, sim, d + u, comp, sim - (d + comp + u), critical, tuple(c for _, c in kept), **counts)


TIMING_COLUMNS = ("round", *ClientTiming._fields)


def append_timing_csv(path: str | Path, round: int, timing: RoundTiming) -> Path:
    """Append one round's per-client rows to a timing table (header written when the file is new)."""
    path = Path(path)
    new = not path.is_file() or path.stat().st_size == 0
    with path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(TIMING_COLUMNS)
        for r in timing.rows:
            writer.writerow(
                [
                    round,
                    r.client,
                    r.kind,
                    r.status,
                    int(r.online),
                    int(r.dropped),
                    int(r.late),
                    *(f"{x:.6g}" for x in (r.download_s, r.compute_s, r.upload_s, r.total_s)),
                ]
            )
    return path


def read_timing_csv(path: str | Path) -> list[dict]:
    """The timing table back as dicts with typed values."""
    out = []
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            out.append(
                {
                    "round": int(row["round"]),
                    "client": int(row["client"]),
                    "kind": row["kind"],
                    "status": row["status"],
                    **{k: row[k] == "1" for k in ("online", "dropped", "late")},
                    **{k: float(row[k]) for k in ("download_s", "compute_s", "upload_s", "total_s")},
                }
            )
    return out


def time_to_accuracy(rounds: list[dict], target: float) -> float | None:
    """Cumulative simulated seconds at the first round whose ``accuracy`` reaches ``target``.

    Each dict is one round in order, with ``accuracy`` and that round's ``sim_seconds`` (absent,
    e.g. the round-0 evaluation of the initial model, counts as 0). None if never reached.
    """
    elapsed = 0.0
    for r in rounds:
        elapsed += float(r.get("sim_seconds") or 0.0)
        acc = r.get("accuracy")
        if acc is not None and acc >= target:
            return elapsed
    return None
