"""Edge devices on Flower's simulation engine (Ray): simulated time end to end, and a two-raylet
Ray cluster on 127.0.0.1 that ``--ray-address`` attaches to."""

import json

import pytest

from fedkron.devices.profiles import load_mix
from fedkron.devices.timing import read_timing_csv, transfer_seconds
from fedkron.runconfig.fields import RunConfig
from fedkron.server.ledger import Ledger

pytestmark = pytest.mark.slow
TINY = dict(model="tiny-bert", task="sst2", local_steps=2, batch_size=8, max_length=24, eval_samples=16, lr=5e-3)


def test_simulated_time_is_computed_from_the_ledgers_bytes(tmp_path):
    """iot-lte-m, 4 clients, k = 2 a round over-selected to 3 (seed 11: round 1 trains 3 and keeps
    the first 2 to finish; in round 2 partition 0 drops out)."""
    from fedkron.sim.simulate import run_sim

    cfg = RunConfig(
        **TINY,
        clients=4,
        rounds=2,
        fraction=0.5,
        over_select=0.5,
        devices="iot-lte-m",
        seed=11,
        out=str(tmp_path / "run"),
    )
    summary = run_sim(cfg)
    folder = tmp_path / "run"
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    ledger = Ledger.read_csv(folder / "ledger.csv")
    timing = read_timing_csv(folder / "timing.csv")
    mix = load_mix("iot-lte-m")
    assert not [r for r in ledger.rows if r.kind == "query"]  # the engine's table replaced the queries
    for row in rows[1:]:
        rnd = row["round"]
        sent = {(r.direction, r.partition_id): r.serialized for r in ledger.rows if r.round == rnd}
        clients = [t for t in timing if t["round"] == rnd]
        for t in clients:
            dev = mix.profile_for(t["client"], 11)
            assert t["kind"] == dev.kind
            if t["status"] in ("ok", "surplus"):
                assert t["download_s"] == pytest.approx(
                    transfer_seconds(sent["down", t["client"]], dev.down_bps, dev.latency_s), rel=1e-5
                )
                assert t["upload_s"] == pytest.approx(
                    transfer_seconds(sent["up", t["client"]], dev.up_bps, dev.latency_s), rel=1e-5
                )
        ok = sorted((t["total_s"], t["client"]) for t in clients if t["status"] == "ok")
        assert len(ok) == 2  # k = 2 kept
        closing = next(t for t in clients if t["client"] == ok[-1][1])
        assert row["sim_seconds"] == pytest.approx(ok[-1][0], rel=1e-5)  # the k-th finisher closes it
        assert row["sim_transfer_seconds"] == pytest.approx(closing["download_s"] + closing["upload_s"], rel=1e-5)
        assert row["accepted"] == 2
    r1 = {t["client"]: t["status"] for t in timing if t["round"] == 1}
    r2 = {t["client"]: t for t in timing if t["round"] == 2}
    assert sorted(r1.values()) == ["ok", "ok", "surplus"] and rows[1]["surplus"] == 1
    assert r2[0]["status"] == "dropped" and rows[2]["dropped"] == 1
    assert not any(r.round == 2 and r.partition_id == 0 for r in ledger.rows)  # a dropout is sent nothing
    broadcast = max(r.serialized for r in ledger.rows if r.round == 2 and r.direction == "down")
    dev = mix.profile_for(0, 11)  # charged the broadcast it downloaded before dropping out
    assert r2[0]["download_s"] == pytest.approx(transfer_seconds(broadcast, dev.down_bps, dev.latency_s), rel=1e-5)
    assert summary["sim_seconds_total"] == pytest.approx(rows[-1]["sim_seconds_total"])
    assert summary["sim_seconds_total"] == pytest.approx(rows[1]["sim_seconds"] + rows[2]["sim_seconds"])


def test_a_simulation_attached_to_a_two_node_ray_cluster_runs_clients_on_both(tmp_path):
    from node_probe import probe_app
    from raycluster import RayCluster

    from fedkron.sim.simulate import run_sim

    with RayCluster(nodes=2, cpus_per_node=1) as cluster:
        cfg = RunConfig(**TINY, clients=2, rounds=2, ray_address=cluster.address, out=str(tmp_path / "run"))
        summary = run_sim(cfg, client_app=probe_app(str(tmp_path)))
        assert cluster.processes()  # still up: the run attached to it and did not start its own Ray
    assert not cluster.processes()  # and everything it started is gone
    assert summary["status"] == "completed"
    seen = [line.split() for f in tmp_path.glob("node-*.txt") for line in f.read_text().splitlines()]
    assert len(seen) == 4  # 2 clients × 2 rounds
    assert len({node for node, _ in seen}) == 2, seen  # one actor on each raylet (1 CPU each), both trained
