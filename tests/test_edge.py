"""Edge devices in the round (no Ray): device plan, simulated time from the ledger's real bytes,
over-selection and deadline, config errors, Ray resources, partitions known without queries, the
compare report's time to target."""

import json
import math

import pytest
import torch
from flwr.app import Message
from loopback import LoopbackGrid

from fedkron.compression import get_codec
from fedkron.devices.profiles import load_mix
from fedkron.devices.timing import plan_round, read_timing_csv
from fedkron.protocol import make_info, make_reply, read_broadcast
from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.server.ledger import Ledger, LedgerGrid, LedgerRow
from fedkron.server.rounds import run_rounds
from fedkron.strategies.edge import keep_timing_rows, timing_row
from fedkron.strategies.registry import build_strategy
from fedkron.strategies.wrapper import FedKron, from_arrayrecord, to_arrayrecord

ROLES = {"l.A": "A", "l.B1": "B1", "l.B2": "B2", "head.weight": "full"}
SHAPES = {"l.A": (2, 2), "l.B1": (3, 2), "l.B2": (2, 3), "head.weight": (4,)}
DEFAULTS = RunConfig().to_record()
BOX = {
    "name": "box",
    "weight": 1,
    "speed": 0.5,
    "down_mbps": 1.0,
    "up_mbps": 0.5,
    "latency_ms": 100,
    "availability": 1.0,
    "dropout": 0.0,
}


def _mix(tmp_path, **changes) -> str:
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"name": "boxes", "profile": [{**BOX, **changes}]}))
    return str(path)


def _cfg(**kw):
    base = dict(
        model="tiny-bert",
        task="sst2",
        clients=6,
        rounds=1,
        local_steps=1,
        uplink="fp32",
        downlink="fp32",
        error_feedback=False,
        max_length=16,
        norm_bound_factor=0,
        aggregation="per-factor",
    )
    return RunConfig(**{**base, **kw}).resolved()


def _initial():
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}


class Clients:
    """Partition p replies update ``ups[p]`` after ``seconds[p]`` of (reported) training."""

    def __init__(self, ups, seconds):
        self.ups, self.seconds, self.trained = ups, seconds, []

    def __call__(self, msg: Message, context) -> Message:
        pid = int(context.node_config["partition-id"])
        if msg.metadata.message_type == "query":
            return Message(make_info(pid, int(context.node_config["num-partitions"])), reply_to=msg)
        read_broadcast(msg.content, DEFAULTS)
        self.trained.append(pid)
        metrics = {"num-examples": 1, "train-loss": 0.1, "partition-id": pid, "train-seconds": self.seconds[pid]}
        return Message(make_reply(get_codec("fp32").encode(self.ups[pid]), metrics), reply_to=msg)


def _run(cfg, clients, known=None):
    ledger = Ledger()
    strategy = FedKron(
        build_strategy(cfg),
        cfg,
        _initial(),
        ROLES,
        ledger=ledger,
        partition_sizes={p: 1 for p in range(cfg.clients)},
        known_partitions=known,
    )
    grid = LedgerGrid(
        LoopbackGrid(cfg.clients, clients), ledger, partition_of=lambda n: strategy.roster.partition_of.get(n, -1)
    )
    result = run_rounds(strategy, grid, to_arrayrecord(_initial()), 1, cfg.rounds, lambda r, a: None, timeout=60)
    return strategy, from_arrayrecord(result.arrays), ledger


def _ups(n):
    g = torch.Generator().manual_seed(1)
    return [{k: 0.1 * torch.randn(SHAPES[k], generator=g) for k in SHAPES} for _ in range(n)]


def _by_hand(ledger, pid, seconds, rnd=1):
    """download + compute + upload of partition ``pid`` on BOX, from the ledger's serialized bytes."""
    down = next(r.serialized for r in ledger.rows if (r.round, r.direction, r.partition_id) == (rnd, "down", pid))
    up = next(r.serialized for r in ledger.rows if (r.round, r.direction, r.partition_id) == (rnd, "up", pid))
    return (down * 8 / 1e6 + 0.1) + seconds / 0.5 + (up * 8 / 0.5e6 + 0.1)


def test_round_time_is_the_slowest_clients_from_real_bytes_and_reported_seconds(flower_identity, tmp_path):
    seconds = [1.0, 4.0, 2.0, 3.0, 0.5, 6.0]
    strategy, _, ledger = _run(_cfg(devices=_mix(tmp_path)), Clients(_ups(6), seconds))
    timing = strategy.edge.timings[1]
    totals = {p: _by_hand(ledger, p, s) for p, s in enumerate(seconds)}
    assert timing.sim_seconds == pytest.approx(max(totals.values()), rel=1e-12)
    assert timing.critical_client == 5 and sorted(timing.aggregated) == list(range(6))
    assert timing.compute_seconds == pytest.approx(12.0)  # 6 s at half this machine's speed
    assert timing.transfer_seconds == pytest.approx(totals[5] - 12.0)
    row = timing_row(timing, 10.0)
    assert row["sim_seconds_total"] == pytest.approx(10.0 + timing.sim_seconds)
    assert row["dropped"] == row["late"] == row["offline"] == 0


def test_over_selection_aggregates_the_first_k_finishers(flower_identity, tmp_path):
    seconds = [9.0, 1.0, 8.0, 2.0, 3.0, 7.0]
    ups = _ups(6)
    cfg = _cfg(devices=_mix(tmp_path), fraction=0.5, over_select=1.0)  # k = 3, 6 sampled
    strategy, final, ledger = _run(cfg, Clients(ups, seconds))
    timing, stats = strategy.edge.timings[1], strategy.round_stats[1]
    assert sorted(timing.aggregated) == [1, 3, 4] and timing.surplus == 3
    assert stats["accepted"] == 3 and stats["failed"] == 0
    assert timing.sim_seconds == pytest.approx(_by_hand(ledger, 4, 3.0))  # the 3rd finisher closes the round
    initial = _initial()
    for k in SHAPES:  # FedAvg of exactly the three fastest updates
        expected = initial[k].double() + sum(ups[p][k].double() for p in (1, 3, 4)) / 3
        torch.testing.assert_close(final[k].double(), expected, rtol=1e-6, atol=1e-6)
    marked = {r.partition_id: r.status for r in ledger.rows if r.direction == "up"}
    assert marked == {0: "surplus", 1: "ok", 2: "surplus", 3: "ok", 4: "ok", 5: "surplus"}


def test_deadline_discards_late_updates_and_counts_them_failed(flower_identity, tmp_path):
    seconds = [1.0, 30.0, 2.0, 40.0, 1.5, 3.0]
    strategy, _, ledger = _run(_cfg(devices=_mix(tmp_path), round_deadline=20.0), Clients(_ups(6), seconds))
    timing, stats = strategy.edge.timings[1], strategy.round_stats[1]
    assert timing.late == 2 and sorted(timing.aggregated) == [0, 2, 4, 5]
    assert timing.sim_seconds == 20.0 and timing.wait_seconds > 0
    assert stats["failed"] == 2 and stats["accepted"] == 4
    assert sorted(r.partition_id for r in ledger.rows if r.status == "late") == [1, 3]


def test_offline_and_dropouts_are_not_sent_anything_and_not_waited_for(flower_identity, tmp_path):
    mix = _mix(tmp_path, availability=0.6, dropout=0.3)
    cfg = _cfg(devices=mix, clients=12, rounds=2, seed=3)
    clients = Clients(_ups(12), [1.0] * 12)
    strategy, _, ledger = _run(cfg, clients)
    profile = load_mix(mix).profile_for(0, 3)
    for rnd in (1, 2):
        plan = plan_round({p: profile for p in range(12)}, range(12), seed=3, round=rnd)
        assert plan.offline and plan.dropped  # the seed is chosen so both happen
        sent = sorted(r.partition_id for r in ledger.rows if r.round == rnd and r.direction == "down")
        assert sent == sorted(plan.to_train)  # only messages that crossed the wire are in the ledger
        timing = strategy.edge.timings[rnd]
        assert (timing.offline, timing.dropped) == (len(plan.offline), len(plan.dropped))
        dropped = [r for r in timing.rows if r.status == "dropped"]
        assert all(r.download_s > 0 and r.upload_s == 0 for r in dropped)  # charged the broadcast, not waited for
        assert timing.sim_seconds == pytest.approx(max(_by_hand(ledger, p, 1.0, rnd) for p in plan.to_train))
    assert sorted(set(clients.trained)) != list(range(12))


def test_a_round_where_no_device_is_reachable_is_abandoned_not_failed(flower_identity, tmp_path):
    cfg = _cfg(devices=_mix(tmp_path, availability=0.01), clients=3, rounds=2)
    clients = Clients(_ups(3), [1.0] * 3)
    strategy, final, ledger = _run(cfg, clients)
    assert not [r for r in ledger.rows if r.kind == "train"] and not clients.trained
    assert all(strategy.round_stats[r]["abandoned"] for r in (1, 2))
    for k in SHAPES:
        torch.testing.assert_close(final[k], _initial()[k])


def test_known_partitions_replace_the_queries(flower_identity, tmp_path):
    cfg = _cfg(clients=4)
    table = {1000 + 1 + i: (i, 4) for i in range(4)}  # LoopbackGrid: node 1001 + i holds partition i
    strategy, _, ledger = _run(cfg, Clients(_ups(4), [1.0] * 4), known=lambda: table)
    assert not [r for r in ledger.rows if r.kind == "query"]
    assert strategy.roster.partition_of == {n: p for n, (p, _) in table.items()}
    # a table for another number of partitions (a compare with more nodes) is not used: nodes are asked
    strategy, _, ledger = _run(
        cfg, Clients(_ups(4), [1.0] * 4), known=lambda: {n: (p, 8) for n, (p, _) in table.items()}
    )
    assert len([r for r in ledger.rows if r.kind == "query"]) == 8


def test_over_select_draws_ceil_k_times_one_plus_f():
    from fedkron.strategies.roster import Roster

    class Nodes:
        def get_node_ids(self):
            return list(range(100))

    roster = Roster(100, seed=0, wait_for=100, min_live=1, known=lambda: {n: (n, 100) for n in range(100)})
    for fraction, extra, want in ((0.1, 0.3, 13), (0.1, 0.0, 10), (0.05, 0.3, 7), (0.5, 1.5, 100)):
        nodes, k = roster.draw(Nodes(), 1, fraction, extra)
        assert (len(nodes), k) == (want, round(100 * fraction))
        assert len(set(nodes)) == len(nodes)
    assert roster.draw(Nodes(), 4, 0.1, 0.3) == roster.draw(Nodes(), 4, 0.1, 0.3)


# ---- config and Ray resources ----


def test_edge_config_errors_are_named_before_ray(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[profile]]\nname = "x"\nweight = 1\nspeed = 1\ndown_mbps = -1\nup_mbps = 1\n'
        "latency_ms = 1\navailability = 1\ndropout = 0\n"
    )
    with pytest.raises(ConfigError) as err:
        RunConfig(task="sst2", devices=str(bad), client_cpus=0, client_gpus=-1, max_actors=-2).resolved()
    text = str(err.value)
    assert "bad.toml: profile[0] (x).down_mbps: expected a number > 0, got -1" in text
    assert "client-cpus must be > 0" in text and "client-gpus must be ≥ 0" in text and "max-actors must be ≥ 0" in text
    with pytest.raises(ConfigError) as err:
        RunConfig(
            task="sst2", over_select=0.3, round_deadline=60, max_actors=2, ray_address="127.0.0.1:6379"
        ).resolved()
    text = str(err.value)
    assert "over-select needs --devices" in text and "round-deadline needs --devices" in text
    assert "max-actors cannot be combined with --ray-address" in text
    with pytest.raises(ConfigError, match="unknown device mix 'phones-5g'"):
        RunConfig(task="sst2", devices="phones-5g").resolved()
    assert RunConfig(task="sst2", devices="phones-4g", over_select=0.3, round_deadline=600).resolved().devices


def test_ray_resources_become_flowers_backend_config():
    import os

    from fedkron.sim.simulate import backend_config

    default = backend_config(RunConfig())
    assert default["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert default["init_args"]["num_cpus"] == os.cpu_count() and "address" not in default["init_args"]
    capped = backend_config(RunConfig(client_cpus=0.5, client_gpus=0.25, max_actors=3))
    assert capped["client_resources"] == {"num_cpus": 0.5, "num_gpus": 0.25}
    assert capped["init_args"]["num_cpus"] == 1.5  # Flower fits CPUs / client-cpus = 3 actors
    remote = backend_config(RunConfig(ray_address="10.0.0.5:6379", client_cpus=2))
    assert remote["init_args"]["address"] == "10.0.0.5:6379" and "num_cpus" not in remote["init_args"]


def test_each_simulated_client_runs_as_many_torch_threads_as_cpus_reserved_for_it(monkeypatch):
    import os

    from fedkron.sim import simulate

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert simulate.actor_env(RunConfig()) == {"OMP_NUM_THREADS": "1"}
    assert simulate.actor_env(RunConfig(client_cpus=2.5)) == {"OMP_NUM_THREADS": "2"}
    assert simulate.actor_env(RunConfig(client_cpus=0.5)) == {"OMP_NUM_THREADS": "1"}
    seen = {}
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    monkeypatch.setattr("ray.init", lambda **kw: seen.update(kw))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # start_ray extends it: restored after
    simulate.start_ray({"num_cpus": 2}, simulate.actor_env(RunConfig()))
    assert seen["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1" and seen["num_cpus"] == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins
    assert simulate.actor_env(RunConfig()) == {}


# ---- results folder and report ----


def test_resumed_timing_table_keeps_completed_rounds_only(tmp_path):
    from fedkron.devices.timing import append_timing_csv, round_time

    profile = load_mix(_mix(tmp_path)).profile_for(0, 0)
    path = tmp_path / "timing.csv"
    for rnd in (1, 2, 3):
        plan = plan_round({0: profile, 1: profile}, [0, 1], 0, rnd)
        append_timing_csv(path, rnd, round_time(plan, {0: 10, 1: 10}, {0: 5, 1: 5}, {0: 1.0, 1: 2.0}))
    keep_timing_rows(path, 2)
    assert [(r["round"], r["client"]) for r in read_timing_csv(path)] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    keep_timing_rows(path, 0)
    assert not path.exists()


def _run_folder(root, name, method, codec, accs, sim, split=(0.25, 0.75)):
    folder = root / name
    folder.mkdir()
    metrics = [
        {
            "round": 0,
            "accuracy": 0.5,
            "bytes_up_total": 0,
            "bytes_down_total": 0,
            "bytes_up": 0,
            "bytes_down": 0,
            "sim_seconds": 0.0,
            "sim_seconds_total": 0.0,
        }
    ]
    total = 0.0
    for rnd, (acc, s) in enumerate(zip(accs, sim), start=1):
        total += s
        metrics.append(
            {
                "round": rnd,
                "accuracy": acc,
                "bytes_up_total": 100 * rnd,
                "bytes_down_total": 100 * rnd,
                "bytes_up": 100,
                "bytes_down": 100,
                "sim_seconds": s,
                "sim_seconds_total": total,
                "sim_transfer_seconds": split[0] * s,
                "sim_compute_seconds": split[1] * s,
                "sim_wait_seconds": 0.0,
            }
        )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (folder / "config.json").write_text(json.dumps({"uplink": codec, "downlink": codec, "devices": "phones-4g"}))
    (folder / "summary.json").write_text(
        json.dumps(
            {"method": method, "trainable_params": 10, "seconds": 1.0, "status": "completed", "majority_baseline": 0.5}
        )
    )
    ledger = Ledger()
    for d in ("down", "up"):
        ledger.add(LedgerRow(1, d, "train", 1, 0, 100, 100, 100))
    ledger.write_csv(folder / "ledger.csv")
    return folder


def test_report_gives_simulated_time_to_the_lora_final_accuracy_minus_one_point(tmp_path):
    from fedkron.sim.report import write_report

    kron = _run_folder(
        tmp_path, "kron-lora-nf4", "kron-lora", "nf4", [0.70, 0.79, 0.80], [100, 100, 100], split=(0.1, 0.9)
    )
    lora = _run_folder(tmp_path, "lora-fp32", "lora", "fp32", [0.75, 0.78, 0.80], [400, 400, 400])
    out = tmp_path / "report"
    report = write_report(out, [kron, lora]).read_text()
    # target 79 %: Kron-LoRA reaches it in round 2 (200 s), LoRA in round 3 (1200 s): 6× sooner
    assert "| kron-lora-nf4 | 0.0833 | 0.00833 | 0.075 | 0 | 10.0% | 0.0556 | 80.0% |" in report
    assert "| lora-fp32 | 0.333 | 0.0833 | 0.25 | 0 | 25.0% | 0.333 | 80.0% |" in report
    assert "| kron-lora-nf4 | 6.00× |" in report and "Target accuracy 79.0%" in report
    assert (out / "accuracy_vs_sim_hours.png").stat().st_size > 1000
    import csv

    rows = {r["run"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert math.isclose(float(rows["kron-lora-nf4"]["hours_to_target"]), 200 / 3600)
    assert math.isclose(float(rows["kron-lora-nf4"]["time_to_target_speedup_vs_lora-fp32"]), 6.0)


def test_cli_flags_reach_the_edge_settings():
    from fedkron.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        [
            "sim",
            "--task",
            "sst2",
            "--devices",
            "iot-lte-m",
            "--over-select",
            "0.3",
            "--round-deadline",
            "900",
            "--client-cpus",
            "0.5",
            "--client-gpus",
            "0.25",
            "--max-actors",
            "4",
        ]
    )
    cfg = config_from_args(args).resolved()
    assert (cfg.devices, cfg.over_select, cfg.round_deadline) == ("iot-lte-m", 0.3, 900.0)
    assert (cfg.client_cpus, cfg.client_gpus, cfg.max_actors, cfg.ray_address) == (0.5, 0.25, 4, "")
    args = build_parser().parse_args(["compare", "--task", "sst2", "--ray-address", "127.0.0.1:6379"])
    assert config_from_args(args).ray_address == "127.0.0.1:6379"
