"""Device profiles and simulated round time: draws, hand-computed rounds, file format, memory."""

import json
import statistics
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkron.devices.mixes import BUILTIN_MIXES
from fedkron.devices.profiles import DeviceMixError, DeviceProfile, draw_profiles, load_mix, mix_from_mapping, save_mix
from fedkron.devices.timing import append_timing_csv, plan_round, read_timing_csv, round_time, time_to_accuracy


def _dev(speed=1.0, down_mbps=8.0, up_mbps=2.0, latency_s=0.05, availability=1.0, dropout=0.0, kind="t"):
    return DeviceProfile(kind, speed, down_mbps * 1e6, up_mbps * 1e6, latency_s, availability, dropout)


def _time(profiles, compute, down=1_000_000, up=250_000, **kw):
    """Every client online, downloading ``down`` and uploading ``up`` bytes."""
    plan = plan_round(profiles, list(profiles), seed=0, round=1)
    return round_time(plan, {c: down for c in profiles}, {c: up for c in profiles}, compute, **kw)


# ---- draws ----


@pytest.mark.parametrize("name", list(BUILTIN_MIXES))
def test_draws_are_deterministic_and_depend_on_the_seed(name):
    mix = load_mix(name)
    assert draw_profiles(mix, 40, seed=3) == draw_profiles(mix, 40, seed=3)
    assert draw_profiles(mix, 40, seed=3) != draw_profiles(mix, 40, seed=4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), small=st.integers(1, 30), extra=st.integers(0, 300))
def test_a_clients_device_does_not_depend_on_the_federation_size(seed, small, extra):
    mix = load_mix("phones-4g")
    few, many = draw_profiles(mix, small, seed), draw_profiles(mix, small + extra, seed)
    assert many[:small] == few
    assert mix.profile_for(small - 1, seed) == few[-1]


def test_draws_follow_the_mix_weights_medians_and_bounds():
    mix = load_mix("phones-4g")
    profiles = draw_profiles(mix, 10_000, seed=0)
    share = {
        k: sum(p.kind == k for p in profiles) / len(profiles) for k in ("phone-flagship", "phone-mid", "phone-low")
    }
    assert share == pytest.approx({"phone-flagship": 0.25, "phone-mid": 0.5, "phone-low": 0.25}, abs=0.02)
    mid = [p for p in profiles if p.kind == "phone-mid"]
    assert statistics.median(p.speed for p in mid) == pytest.approx(0.25, rel=0.03)
    assert statistics.median(p.down_bps for p in profiles) == pytest.approx(20e6, rel=0.05)
    assert min(p.down_bps for p in profiles) >= 0.5e6 and min(p.up_bps for p in profiles) >= 0.1e6
    assert len({p.up_bps for p in profiles}) == len(profiles)  # clients differ
    lte_m = draw_profiles(load_mix("iot-lte-m"), 5_000, seed=1)
    assert max(p.down_bps for p in lte_m) == pytest.approx(0.8e6)  # the Cat-M1 ceiling clips


def test_drawing_ten_thousand_profiles_stays_small():
    mix = load_mix("phones-4g")
    tracemalloc.start()
    profiles = draw_profiles(mix, 10_000, seed=0)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(profiles) == 10_000
    assert size < 10 * 2**20, f"{size / 2**20:.1f} MiB for 10,000 profiles"
    assert size / 10_000 < 400  # a tuple of floats per client, nothing bigger


# ---- one round ----


def test_round_time_equals_a_hand_computation():
    # 1 MB down at 8 Mbit/s = 1 s, +50 ms; 10 s of compute at half speed = 20 s; 0.25 MB up at 2 Mbit/s = 1 s, +50 ms
    t = _time({0: _dev(speed=0.5)}, {0: 10.0})
    row = t.rows[0]
    assert (row.download_s, row.compute_s, row.upload_s) == pytest.approx((1.05, 20.0, 1.05))
    assert row.total_s == pytest.approx(22.1) and row.status == "ok"
    assert t.sim_seconds == pytest.approx(22.1)
    assert (t.transfer_seconds, t.compute_seconds, t.wait_seconds) == pytest.approx((2.1, 20.0, 0.0))


def test_the_slowest_client_decides_a_synchronous_round():
    profiles = {0: _dev(speed=1.0), 1: _dev(speed=0.25, up_mbps=0.5), 2: _dev(speed=2.0)}
    t = _time(profiles, {0: 8.0, 1: 8.0, 2: 8.0})
    slow = next(r for r in t.rows if r.client == 1)
    assert slow.upload_s == pytest.approx(4.05)
    assert t.critical_client == 1 and t.sim_seconds == pytest.approx(1.05 + 32.0 + 4.05)
    assert t.transfer_seconds == pytest.approx(5.1) and t.compute_seconds == pytest.approx(32.0)
    assert t.aggregated == (2, 0, 1) and t.sim_seconds == max(r.total_s for r in t.rows)


def test_a_deadline_marks_late_clients_and_caps_the_round():
    profiles = {c: _dev() for c in range(3)}
    compute = {0: 7.9, 1: 17.9, 2: 27.9}  # totals 10, 20, 30 s
    t = _time(profiles, compute, deadline=25.0)
    assert t.sim_seconds == 25.0 and t.late == 1 and t.aggregated == (0, 1)
    assert [r.late for r in sorted(t.rows)] == [False, False, True]
    assert t.critical_client == 1 and t.wait_seconds == pytest.approx(5.0)
    assert _time(profiles, compute, deadline=40.0).sim_seconds == pytest.approx(30.0)  # nobody late: no waiting


def test_over_selection_keeps_the_k_fastest():
    profiles = {c: _dev() for c in range(5)}
    compute = {0: 50.0, 1: 10.0, 2: 40.0, 3: 20.0, 4: 30.0}
    t = _time(profiles, compute, over_select_k=3)
    assert sorted(t.aggregated) == [1, 3, 4] and t.surplus == 2 and t.late == 0
    assert t.sim_seconds == pytest.approx(30.0 + 2.1)
    both = _time(profiles, compute, over_select_k=3, deadline=25.0)  # only two finish in time
    assert both.aggregated == (1, 3) and both.late == 3 and both.sim_seconds == 25.0


def test_dropped_and_offline_clients_are_not_waited_for():
    profiles = {0: _dev(), 1: _dev(speed=0.01, dropout=1.0), 2: _dev(speed=0.01, availability=0.0)}
    plan = plan_round(profiles, [0, 1, 2], seed=0, round=1)
    assert plan.dropped == [1] and plan.offline == [2] and plan.to_train == [0]
    t = round_time(plan, {0: 1e6, 1: 1e6}, {0: 2.5e5}, {0: 10.0})  # no compute or upload for 1 and 2
    assert t.sim_seconds == pytest.approx(12.1) and t.aggregated == (0,)
    assert (t.dropped, t.offline) == (1, 1)
    rows = {r.client: r for r in t.rows}
    assert rows[1].status == "dropped" and rows[1].download_s == pytest.approx(1.05)  # its download still happened
    assert rows[2].status == "offline" and rows[2].total_s == 0.0
    with pytest.raises(KeyError, match="compute_seconds has no entry for client 0"):
        round_time(plan, {0: 1e6}, {0: 1e6}, {})


def test_availability_and_dropout_frequencies_match_their_probabilities():
    profiles = [_dev(availability=0.7, dropout=0.1)] * 20_000
    plan = plan_round(profiles, range(20_000), seed=11, round=3)
    online = sum(c.online for c in plan.clients)
    assert online / 20_000 == pytest.approx(0.7, abs=0.015)  # sd 0.0032: fixed seed, no flake
    assert len(plan.dropped) / online == pytest.approx(0.1, abs=0.012)
    across_rounds = [plan_round(profiles, [5], seed=11, round=r).clients[0].online for r in range(4_000)]
    assert sum(across_rounds) / 4_000 == pytest.approx(0.7, abs=0.03)  # a client is not online every round


def test_a_round_plan_depends_on_seed_round_and_client_only():
    profiles = [_dev(availability=0.5, dropout=0.3)] * 100
    a = {c.client: c for c in plan_round(profiles, range(100), seed=2, round=4).clients}
    b = {c.client: c for c in plan_round(profiles, [90, 7, 42], seed=2, round=4).clients}
    assert all(b[k] == a[k] for k in b)
    other = plan_round(profiles, range(100), seed=2, round=5).clients
    assert [c.online for c in other] != [a[c].online for c in range(100)]


def test_time_to_accuracy_sums_simulated_rounds():
    rounds = [
        {"round": 0, "accuracy": 0.5},
        {"round": 1, "accuracy": 0.6, "sim_seconds": 10.0},
        {"round": 2, "accuracy": 0.55, "sim_seconds": 12.0},
        {"round": 3, "accuracy": 0.7, "sim_seconds": 8.0},
    ]
    assert time_to_accuracy(rounds, 0.65) == pytest.approx(30.0)
    assert time_to_accuracy(rounds, 0.6) == pytest.approx(10.0)
    assert time_to_accuracy(rounds, 0.5) == 0.0
    assert time_to_accuracy(rounds, 0.9) is None


def test_timing_table_round_trip(tmp_path):
    profiles = {0: _dev(), 1: _dev(dropout=1.0), 2: _dev(speed=0.5)}
    path = tmp_path / "timing.csv"
    for rnd in (1, 2):
        plan = plan_round(profiles, [0, 1, 2], seed=0, round=rnd)
        append_timing_csv(path, rnd, round_time(plan, {0: 1e6, 2: 1e6}, {0: 1e5, 2: 1e5}, {0: 3.0, 2: 3.0}))
    rows = read_timing_csv(path)
    assert len(rows) == 6 and path.read_text().count("round,client") == 1
    assert [r["round"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert rows[1]["status"] == "dropped" and rows[1]["dropped"] and not rows[1]["late"]
    assert rows[2]["compute_s"] == pytest.approx(6.0) and rows[2]["total_s"] == pytest.approx(
        1.05 + 6 + 0.45
    )  # 0.1 MB up at 2 Mbit/s = 0.4 s


# ---- file format ----


@pytest.mark.parametrize("suffix", [".toml", ".json"])
@pytest.mark.parametrize("name", list(BUILTIN_MIXES))
def test_file_round_trip(tmp_path, name, suffix):
    mix = load_mix(name)
    loaded = load_mix(save_mix(mix, tmp_path / f"mix{suffix}"))
    assert loaded == mix
    assert draw_profiles(loaded, 20, 5) == draw_profiles(mix, 20, 5)


GOOD = {
    "name": "x",
    "profile": [
        {
            "name": "a",
            "weight": 1,
            "speed": 0.5,
            "down_mbps": {"median": 10, "sigma": 0.5},
            "up_mbps": 2,
            "latency_ms": 40,
            "availability": 0.9,
            "dropout": 0.05,
        }
    ],
}


def _with(**changes):
    doc = json.loads(json.dumps(GOOD))
    doc["profile"][0].update(changes)
    for k, v in list(doc["profile"][0].items()):
        if v is None:
            del doc["profile"][0][k]
    return doc


@pytest.mark.parametrize(
    "doc, message",
    [
        (_with(down_mbps={"median": 10, "sigma": -1}), r"profile\[0\] \(a\)\.down_mbps\.sigma: expected a number >= 0"),
        (_with(availability=1.5), r"profile\[0\] \(a\)\.availability: expected a probability 0 < p <= 1, got 1\.5"),
        (_with(dropout=None), r"profile\[0\]: missing field\(s\) \['dropout'\]"),
        (_with(dropuot=0.1), r"unknown field\(s\) \['dropuot'\]"),
        (_with(up_mbps=0), r"\(a\)\.up_mbps: expected a number > 0, got 0"),
        (_with(speed="fast"), r"\(a\)\.speed: expected a finite number, got 'fast'"),
        (_with(latency_ms={"sigma": 1}), r"\(a\)\.latency_ms\.median: missing"),
        (_with(weight=0), r"\(a\)\.weight: expected a number > 0"),
        ({"profile": []}, r"'profile' must be a non-empty list"),
        ({**GOOD, "profiles": []}, r"unknown key\(s\) \['profiles'\]"),
    ],
)
def test_invalid_mixes_name_the_field(doc, message):
    with pytest.raises(DeviceMixError, match=message):
        mix_from_mapping(doc, "mix.toml")


def test_load_mix_errors(tmp_path):
    with pytest.raises(DeviceMixError, match=r"unknown device mix 'phones-5g': not a built-in \(phones-4g, iot-lte-m"):
        load_mix("phones-5g")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[profile]\nname = 'a'\n")
    with pytest.raises(DeviceMixError, match=r"bad\.toml: not valid TOML"):
        load_mix(bad)
    (tmp_path / "mix.yaml").write_text("x")
    with pytest.raises(DeviceMixError, match=r"must end in \.toml or \.json"):
        load_mix(tmp_path / "mix.yaml")
    custom = tmp_path / "custom.toml"
    custom.write_text(
        'name = "edge"\n[[profile]]\nname = "pi"\nweight = 1\nspeed = 0.05\n'
        "down_mbps = { median = 5, sigma = 0.5 }\nup_mbps = 1\nlatency_ms = 50\n"
        "availability = 0.9\ndropout = 0.02\n"
    )
    (p,) = draw_profiles(load_mix(str(custom)), 1, 0)
    assert p.kind == "pi" and p.up_bps == 1e6 and p.latency_s == 0.05 and p.speed == 0.05


_GOOD_TOML = (
    'name = "edge"\n[[profile]]\nname = "pi"\nweight = 1\nspeed = 0.05\n'
    "down_mbps = 5\nup_mbps = 1\nlatency_ms = 50\navailability = 0.9\ndropout = 0.02\n"
)


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "latin1.toml",
            _GOOD_TOML.replace('"pi"', '"p\xef"').encode("latin-1"),
            r"byte b'\\xef' at offset \d+ is not UTF-8",
        ),
        ("deep.json", "[" * 100_000 + "]" * 100_000, r"deep\.json: nested too deeply to read"),
        ("deep.toml", "x = " + "[" * 100_000 + "]" * 100_000, r"deep\.toml: (nested too deeply|not valid TOML)"),
        (
            "digits.json",
            json.dumps(GOOD).replace('"weight": 1', '"weight": ' + "9" * 5000),
            r"a value Python cannot read",
        ),
        (
            "huge.json",
            json.dumps(GOOD).replace('"up_mbps": 2', '"up_mbps": 1' + "0" * 400),
            r"up_mbps: expected a finite",
        ),
        (
            "e300.json",
            json.dumps(GOOD).replace('"up_mbps": 2', '"up_mbps": 1e300'),
            r"up_mbps: 1e\+300 is out of range",
        ),
        (
            "sigma.json",
            json.dumps(GOOD).replace('"sigma": 0.5', '"sigma": 1000'),
            r"down_mbps\.sigma: expected at most 5",
        ),
    ],
)
def test_a_bad_mix_file_is_one_line(tmp_path, name, content, message):
    """Non-UTF-8, 100k-deep, 5000-digit and out-of-range files: a DeviceMixError of one line (they
    were a UnicodeDecodeError, a 3,000-line RecursionError, a ValueError and an OverflowError)."""
    path = tmp_path / name
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    with pytest.raises(DeviceMixError, match=message) as info:
        load_mix(str(path))
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
