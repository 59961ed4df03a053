"""``fedkron frontier`` without Ray: run specs with rank and targets, paired seeds, resume, the
statistics, Pareto fronts, bytes to target and the exact codec × adapter × rounds decomposition,
on run folders a stand-in ``run`` writes as a real run would."""

import json
import math
import os
import statistics
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.server.ledger import Ledger, LedgerRow

BASE = dict(model="tiny-bert", task="sst2", clients=2, rounds=3, local_steps=1, batch_size=4, max_length=16)
BYTES_PER_VALUE = {"fp32": 4.0, "nf4": 0.5}
OVERHEAD = 100  # framing bytes of every message
ROOT = Path(__file__).parents[1]


def _values(cfg: RunConfig) -> int:
    """Adapter values of a made-up run: LoRA 64 per rank and target, Kron-LoRA 10 per rank."""
    per = 64 * (2 if cfg.targets == "query,value" else 6) if cfg.method == "lora" else 10
    return per * cfg.rank


def _accuracy(cfg: RunConfig, rnd: int) -> float:
    quality = {"lora": 0.80, "kron-lora": 0.78}[cfg.method] + 0.004 * math.log2(cfg.rank)
    return round(quality - 0.02 * (cfg.rounds - rnd) + 0.003 * cfg.seed - (0.01 if cfg.uplink == "nf4" else 0), 6)


def fake_run(cfg: RunConfig, progress=None) -> dict:
    """What a real run leaves in ``cfg.out``: config, ledger (with values), metrics, summary, checkpoint."""
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_record()))
    ledger, values = Ledger(), _values(cfg)
    metrics = [
        {"round": 0, "accuracy": 0.5, "bytes_up_total": 0, "bytes_down_total": 0, "bytes_up": 0, "bytes_down": 0}
    ]
    size = int(values * BYTES_PER_VALUE[cfg.uplink]) + OVERHEAD
    for rnd in range(1, cfg.rounds + 1):
        for client in range(cfg.clients):
            for d in ("down", "up"):
                ledger.add(LedgerRow(rnd, d, "train", client, client, size, size, size, values=values))
        total, sent = ledger.total("up") + ledger.total("down"), ledger.total("up", round=rnd)
        metrics.append(
            {
                "round": rnd,
                "accuracy": _accuracy(cfg, rnd),
                "bytes_up_total": total // 2,
                "bytes_down_total": total // 2,
                "bytes_up": sent,
                "bytes_down": sent,
            }
        )
    ledger.write_csv(folder / "ledger.csv")
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    summary = {"method": cfg.method, "trainable_params": values, "seconds": 1.0, "status": "completed",
               "eval_rows": 400, "majority_baseline": 0.5, "eval_note": "fake rows"}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    ckpt = folder / "checkpoint" / f"round-{cfg.rounds}"
    ckpt.mkdir(parents=True)
    for name in ("state.json", "global.safetensors", "rng.safetensors"):
        (ckpt / name).write_text("")
    (folder / "checkpoint" / "latest.json").write_text(json.dumps({"round": cfg.rounds, "folder": ckpt.name}))
    return summary


@pytest.fixture(autouse=True)
def checked(monkeypatch):
    """The model and data checks stand in (real ones load SST-2 per seed: seconds); the order of
    checks and runs is recorded, so a test can see every config checked before any run."""
    from fedkron.sim import compare

    events = []
    monkeypatch.setattr(compare, "model_problems", lambda cfg: events.append(("check", cfg.out)) or [])
    monkeypatch.setattr(compare, "data_problems", lambda cfg: [])
    return events


def test_run_specs_take_rank_and_targets_in_any_order_and_name_every_problem(tmp_path, monkeypatch):
    from fedkron.sim import compare
    from fedkron.sim.compare import parse_runs, run_configs

    specs = parse_runs("lora:nf4:r8:query+value, kron-lora:r2:exact:nf4, flowertune:r4, lora:fp32, kron-lora:nf4")
    assert [s.label for s in specs] == [
        "lora:nf4:r8:query+value", "kron-lora:nf4:exact:r2", "flowertune:r4", "lora:fp32", "kron-lora:nf4",
    ]  # fmt: skip
    assert [s.folder for s in specs][:2] == ["lora-nf4-r8-query+value", "kron-lora-nf4-exact-r2"]
    cfgs = run_configs(RunConfig(**BASE), specs, tmp_path)
    got = [(c.method, c.uplink, c.aggregation, c.rank, c.targets) for c in cfgs]
    assert got == [
        ("lora", "nf4", "per-factor", 8, "query,value"),
        ("kron-lora", "nf4", "exact", 2, "all-linear"),
        ("lora", "fp32", "per-factor", 4, "query,value"),  # FlowerTune's targets, its rank given
        ("lora", "fp32", "per-factor", 8, "all-linear"),  # LoRA-8 unless a rank is named
        ("kron-lora", "nf4", "per-factor", 4, "all-linear"),
    ]
    with pytest.raises(ConfigError) as info:
        parse_runs("lora:int3:r0,lora:nf4:fp32,dora,lora:q-v,kron-lora:nf4:alternating")
    text = str(info.value)
    for part in ("codec 'int3'", "rank r0", "two codecs ('nf4', 'fp32')", "method 'dora'", "'q-v' is no codec"):
        assert part in text, part
    # aggregations are read from runconfig when parsing: one added there is known here
    monkeypatch.setattr(compare, "AGGREGATIONS", compare.AGGREGATIONS + ("alternating",))
    assert parse_runs("kron-lora:nf4:alternating:r2")[0].aggregation == "alternating"


def test_seeds_parse_as_ranges_and_lists():
    from fedkron.sim.frontier import parse_seeds

    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,2, 7") == [0, 2, 7]
    assert parse_seeds("1-2,2,5") == [1, 2, 5]
    for bad in ("", "3-1", "a", "1-"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_frontier_pairs_seeds_resumes_and_adds_configs_and_seeds(tmp_path, checked):
    from fedkron.sim.compare import parse_runs
    from fedkron.sim.frontier import run_frontier

    started = []

    def run(cfg, progress=None):
        started.append(cfg)
        checked.append(("run", cfg.out))
        return fake_run(cfg)

    base = RunConfig(**BASE)
    report = run_frontier(base, parse_runs("kron-lora:nf4:r2,lora:fp32:r8"), [0, 1], tmp_path, run=run)
    assert sorted(f"{Path(c.out).parent.name}/{Path(c.out).name}" for c in started) == [
        "seed0/kron-lora-nf4-r2", "seed0/lora-fp32-r8", "seed1/kron-lora-nf4-r2", "seed1/lora-fp32-r8",
    ]  # fmt: skip
    for seed in (0, 1):  # the configs of one seed share it, and everything but what their spec sets
        mine = [c.to_record() for c in started if c.seed == seed]
        assert {c["seed"] for c in mine} == {seed} and len(mine) == 2
        differ = {k for k in mine[0] if mine[0][k] != mine[1][k]}
        assert differ <= {"method", "rank", "uplink", "downlink", "lr", "out", "client-state-dir"}, differ
    assert {p.name for p in tmp_path.iterdir()} >= {"frontier.md", "frontier.csv", "frontier.json", "frontier.png"}
    assert "kron-lora-nf4-r2" in report.read_text()
    assert [e for e, _ in checked] == ["check"] * 4 + ["run"] * 4  # every run checked before the first starts

    started.clear()  # resumed with one config and one seed more: only the new runs start
    specs = parse_runs("kron-lora:nf4:r2,lora:fp32:r8,lora:nf4:r2")
    run_frontier(base, specs, [0, 1, 2], tmp_path, run=run, resume=True)
    new = sorted(f"seed{c.seed}/{Path(c.out).name}" for c in started)
    assert new == [
        "seed0/lora-nf4-r2",
        "seed1/lora-nf4-r2",
        "seed2/kron-lora-nf4-r2",
        "seed2/lora-fp32-r8",
        "seed2/lora-nf4-r2",
    ]
    result = json.loads((tmp_path / "frontier.json").read_text())
    assert {c["config"]: c["n"] for c in result["configs"]} == {
        "kron-lora-nf4-r2": 3,
        "lora-fp32-r8": 3,
        "lora-nf4-r2": 3,
    }

    started.clear()  # without a reference nor --target: refused before any run
    with pytest.raises(ConfigError, match="add lora:fp32:r8 to --runs, or give --target"):
        run_frontier(base, parse_runs("kron-lora:nf4:r1"), [0], tmp_path / "other", run=run)
    assert started == []


def test_mean_ci_is_the_t_interval_and_the_table_stands_in_for_scipy(monkeypatch):
    import sys

    from fedkron.sim import frontier_report as fr

    mean, half = fr.mean_ci([0.80, 0.82, 0.84])  # sd 0.02, n 3, t(2) = 4.303
    assert mean == pytest.approx(0.82) and half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    assert fr.mean_ci([0.7]) == (0.7, None) and fr.mean_ci([]) == (None, None)
    scipy_t = {df: fr.t_quantile(df) for df in (1, 2, 4, 9, 30)}
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # as if scipy were not installed
    for df, want in scipy_t.items():
        assert fr.t_quantile(df) == pytest.approx(want, abs=1e-3)
    assert fr.t_quantile(11) == fr.T975[10]  # between rows: the wider value


def _config(name, method, mb, acc, seeds=(0, 1, 2), rounds=()):
    accs = acc if isinstance(acc, (list, tuple)) else [acc] * len(seeds)
    return {
        "config": name, "method": method, "n": len(seeds), "codec": "nf4 / nf4",
        "bytes_total": Fraction(mb * 10**6), "final_mean": sum(accs) / len(accs),
        "per_seed": {s: {"final": a} for s, a in zip(seeds, accs)}, "rounds": list(rounds),
        "client_rounds": Fraction(6), "values_total": Fraction(mb * 10**6, 2),
    }  # fmt: skip


def test_pareto_front_drops_a_dominated_config_and_bytes_to_target_reads_it():
    from fedkron.sim.frontier_report import bytes_to_target, pareto_front

    a = _config("a", "lora", 1, 0.80, rounds=[{"round": 1, "accuracy": 0.79, "bytes_total": 4e5}])
    b = _config("b", "lora", 2, 0.78)  # more bytes, lower accuracy than a: dominated
    c = _config("c", "lora", 4, 0.85, rounds=[{"round": 1, "accuracy": 0.81, "bytes_total": 9e5}])
    assert [x["config"] for x in pareto_front([a, b, c])] == ["a", "c"]
    hit = bytes_to_target([a, b, c], 0.82)
    assert hit["front"] == {"config": "c", "bytes": 4e6}
    assert hit["per_round"] is None  # no round's seed-mean accuracy reached 82 %
    hit = bytes_to_target([a, b, c], 0.79)
    assert hit["front"]["config"] == "a" and hit["per_round"] == {"config": "a", "round": 1, "bytes": 4e5}
    assert bytes_to_target([b], 0.9) == {"front": None, "per_round": None}


def test_paired_difference_is_per_seed_and_its_bytes_ratio_decomposes_exactly():
    from fedkron.sim.frontier_report import paired
    from fedkron.sim.report import decompose

    ref = _config("ref", "lora", 3, [0.80, 0.84, 0.82])
    run = _config("run", "kron-lora", 1, [0.79, 0.82, 0.83])
    run["values_total"], run["client_rounds"] = Fraction(123_457, 3), Fraction(5)
    p = paired(run, ref)
    diffs = [-0.01, -0.02, 0.01]
    assert p["pairs"] == 3 and p["acc_diff_mean"] == pytest.approx(sum(diffs) / 3)
    sd = math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    assert p["acc_diff_ci"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-6)
    parts = decompose(ref, run)
    assert parts["codec"] * parts["adapter"] * parts["rounds"] == parts["total"] == Fraction(3)  # exactly
    assert p["bytes_ratio"] == pytest.approx(3.0) and p["rounds"] == pytest.approx(6 / 5)
    assert decompose(ref, {**run, "values_total": 0}) is None  # a ledger without values: no split
    assert p["last3_diff_mean"] is None  # no last-3 accuracy scored: no difference made up
    for seed, (mine, theirs) in enumerate([(0.70, 0.75), (0.80, 0.81), (0.78, 0.78)]):
        run["per_seed"][seed]["last3"], ref["per_seed"][seed]["last3"] = mine, theirs
    p = paired(run, ref)
    assert p["last3_diff_mean"] == pytest.approx(-0.02) and p["last3_diff_ci"] > p["acc_diff_ci"] > 0


def test_frontier_report_states_fronts_targets_and_decompositions(tmp_path):
    from fedkron.sim.compare import parse_runs
    from fedkron.sim.frontier import run_frontier

    specs = parse_runs("kron-lora:nf4:r1,kron-lora:nf4:r4,lora:nf4:r8,lora:fp32:r8")
    run_frontier(RunConfig(**BASE), specs, [0, 1, 2], tmp_path, run=fake_run)
    result = json.loads((tmp_path / "frontier.json").read_text())
    configs = {c["config"]: c for c in result["configs"]}
    ref = configs["lora-fp32-r8"]
    assert result["reference"] == "lora-fp32-r8" and result["target"] == pytest.approx(ref["final_mean"] - 0.01)
    kron = configs["kron-lora-nf4-r4"]
    vs = kron["vs_reference"]
    # 6 client-rounds both ways × 2 messages: rounds 1; values 40 vs 3072 per message; bytes/value incl. 100 B framing
    assert vs["rounds"] == pytest.approx(1.0) and vs["adapter"] == pytest.approx(3072 / 40)
    assert vs["codec"] == pytest.approx((3072 * 4 + 100) / 3072 / ((40 * 0.5 + 100) / 40))
    assert vs["codec"] * vs["adapter"] * vs["rounds"] == pytest.approx(vs["bytes_ratio"], rel=1e-12)
    assert vs["acc_diff_mean"] == pytest.approx(_acc("kron-lora", 4, "nf4") - _acc("lora", 8, "fp32"))
    assert kron["vs_best_lora"]["vs"] == "lora-nf4-r8"
    assert result["fronts"]["kron-lora"] == ["kron-lora-nf4-r1", "kron-lora-nf4-r4"]
    assert result["fronts"]["lora"] == ["lora-nf4-r8", "lora-fp32-r8"]
    assert result["bytes_to_target"]["kron-lora"] == {"front": None, "per_round": None}  # never within 1 point
    lora_hit = result["bytes_to_target"]["lora"]
    assert lora_hit["front"]["config"] == "lora-nf4-r8" and lora_hit["per_round"]["config"] == "lora-nf4-r8"
    # the protocol's noise: the reference's spread over seeds (the stand-in adds 0.3 points a seed)
    assert ref["final_sd"] == pytest.approx(0.003) and ref["last3_sd"] == pytest.approx(0.003)
    assert vs["last3_diff_mean"] == pytest.approx(vs["acc_diff_mean"])  # same round-by-round shape
    text = (tmp_path / "frontier.md").read_text()
    assert "the reference's seed-to-seed sd is 0.3 points (final) and 0.3 (last-3) over 3 seeds" in text
    assert "| kron-lora-nf4-r4 | lora-fp32-r8 | 3 |" in text and "adapter × 1 rounds" in text
    assert "not reached" in text
    header = (tmp_path / "frontier.csv").read_text().splitlines()[0]
    assert {"adapter_vs_reference", "final_ci", "last3_sd", "last3_diff_ci_vs_best_lora"} <= set(header.split(","))


def _acc(method, rank, codec):
    cfgs = [RunConfig(**{**BASE, "method": method, "rank": rank, "uplink": codec, "seed": s}) for s in (0, 1, 2)]
    return sum(_accuracy(c, c.rounds) for c in cfgs) / 3


def test_compare_savings_cells_split_each_total_into_codec_adapter_and_rounds(tmp_path):
    from fedkron.sim.compare import parse_runs, run_compare

    run_compare(RunConfig(**BASE), parse_runs("kron-lora:nf4:r4,lora:fp32"), tmp_path, run=fake_run)
    text = (tmp_path / "report.md").read_text()
    codec = (3072 * 4 + 100) / 3072 / ((40 * 0.5 + 100) / 40)
    ratio = (3072 * 4 + 100) / (40 * 0.5 + 100)
    assert f"| kron-lora-nf4-r4 | {ratio:.1f}× / {ratio:.1f}× / " in text
    assert f"= {codec:.3g} codec × {3072 / 40:.3g} adapter × 1 rounds |" in text


def test_a_failed_run_loses_no_other_and_is_left_out_of_its_config_figures(tmp_path):
    from fedkron.sim.compare import parse_runs
    from fedkron.sim.frontier import run_frontier

    def run(cfg, progress=None):
        if cfg.seed == 2 and cfg.method == "kron-lora":
            raise RuntimeError("the run never wrote a thing")
        summary = fake_run(cfg)
        if cfg.seed == 1 and cfg.method == "kron-lora":  # ended failed, its summary says so
            summary["status"] = "failed: RuntimeError: boom"
            (Path(cfg.out) / "summary.json").write_text(json.dumps(summary))
        return summary

    run_frontier(RunConfig(**BASE), parse_runs("kron-lora:nf4:r2,lora:fp32:r8"), [0, 1, 2], tmp_path, run=run)
    configs = {c["config"]: c for c in json.loads((tmp_path / "frontier.json").read_text())["configs"]}
    assert (configs["kron-lora-nf4-r2"]["n"], configs["kron-lora-nf4-r2"]["left_out"]) == (1, 1)
    assert configs["kron-lora-nf4-r2"]["seeds"] == [0] and configs["lora-fp32-r8"]["n"] == 3
    assert configs["kron-lora-nf4-r2"]["vs_reference"]["pairs"] == 1
    assert "| 1 (1 left out) |" in (tmp_path / "frontier.md").read_text()


def _vconfig(name, method, mb, accs, codec="nf4 / nf4", reference=False, aggregation="per-factor", rank=4):
    seeds = tuple(range(len(accs)))
    return {
        **_config(name, method, mb, list(accs), seeds=seeds),
        "codec": codec, "reference": reference, "aggregation": aggregation, "rank": rank, "targets": "all-linear",
    }  # fmt: skip


def test_verdict_reads_bytes_to_target_off_each_front_with_a_seed_resampled_interval():
    import math

    from fedkron.sim.frontier_verdict import verdict

    kron = _vconfig("kron-r2", "kron-lora", 1, [0.82, 0.83, 0.84, 0.82, 0.83])
    kron_big = _vconfig("kron-r4", "kron-lora", 2, [0.84] * 5)
    cheap_lora = _vconfig("lora-r1", "lora", 2, [0.70, 0.71, 0.69, 0.70, 0.70])  # never reaches 80 %
    lora = _vconfig("lora-r2", "lora", 3, [0.85, 0.86, 0.84, 0.85, 0.86])
    ref = _vconfig("lora-fp32", "lora", 30, [0.81] * 5, codec="fp32 / fp32", reference=True, rank=8)
    configs = [kron, kron_big, cheap_lora, lora, ref]
    rows = {r["against"]: r for r in verdict(configs, 0.80, derived=False)}
    same = rows["best LoRA at nf4 / nf4"]
    assert same["own"] == ("kron-r2", 1e6) and same["other"] == ("lora-r2", 3e6)  # r1 never reaches it
    assert same["ratio"] == pytest.approx(3.0)
    # every seed of both is above 80 %: every resample gives 3×, both reach it in all
    assert (same["low"], same["high"], same["both_reach"], same["seeds"]) == (
        pytest.approx(3.0),
        pytest.approx(3.0),
        1.0,
        5,
    )
    assert rows["the reference"]["ratio"] == pytest.approx(30.0)
    assert "FlowerTune (fp32)" not in rows  # no flowertune config in this grid
    # a config run at one seed only is left out of the resampling, not shrinking it to one seed
    one_seed = _vconfig("lora-r8", "lora", 10, [0.9])
    row = next(r for r in verdict([*configs, one_seed], 0.80, derived=False) if r["against"].startswith("best LoRA at"))
    assert (row["seeds"], row["low"], row["high"]) == (5, pytest.approx(3.0), pytest.approx(3.0))

    # a LoRA that hovers at the target: some resamples miss it (∞), some reach it (3×)
    near = _vconfig("lora-r2", "lora", 3, [0.79, 0.81, 0.80, 0.79, 0.82])
    row = verdict([kron, near], 0.80, derived=False)[0]
    assert row["ratio"] == pytest.approx(3.0) and row["low"] == pytest.approx(3.0) and row["high"] == math.inf
    assert 0.2 < row["both_reach"] < 1.0
    # the method itself never reaches it: 0×, not a saving
    assert verdict([cheap_lora, _vconfig("k", "kron-lora", 1, [0.5] * 5)], 0.6, derived=False)[0]["ratio"] == 0.0
    # a derived target moves with the resampled reference: a reference spread over seeds widens it
    wide = _vconfig("lora-fp32", "lora", 30, [0.76, 0.86, 0.81, 0.78, 0.84], codec="fp32 / fp32", reference=True)
    row = next(r for r in verdict([kron, lora, wide], 0.80, derived=True) if r["against"] == "the reference")
    # (the reference always reaches its own mean − 1 point; kron misses the higher targets: 0×)
    assert (row["low"], row["high"]) == (0.0, pytest.approx(30.0)) and 0.0 < row["both_reach"] < 1.0
    assert verdict(configs, None, derived=True) == []


def test_a_non_per_factor_config_is_paired_with_its_per_factor_twin(tmp_path):
    from fedkron.sim.frontier_report import paired, paired_tables, per_factor_twin

    per_factor = _vconfig("kron-r4", "kron-lora", 2, [0.84, 0.85, 0.83])
    alternating = _vconfig("kron-alt-r4", "kron-lora", 1, [0.80, 0.83, 0.82], aggregation="alternating")
    other_rank = _vconfig("kron-r2", "kron-lora", 1, [0.84] * 3, rank=2)
    assert per_factor_twin(alternating, [per_factor, alternating, other_rank]) is per_factor
    assert per_factor_twin(per_factor, [per_factor, alternating]) is None
    assert per_factor_twin({**alternating, "rank": 8}, [per_factor, other_rank]) is None
    for c in (per_factor, alternating, other_rank):
        c["vs_reference"] = c["vs_best_lora"] = None
        c["vs_per_factor"] = None
    alternating["vs_per_factor"] = paired(alternating, per_factor)
    (table,) = paired_tables([per_factor, alternating, other_rank])  # no reference, no LoRA: no empty tables
    # Δ = (−4, −2, −1) points; 2× fewer bytes
    assert (
        "per-factor aggregation" in table
        and "| kron-alt-r4 | kron-r4 | 3 | -2.3 ± 3.8 |" in table
        and "| 2× = " in table
    )


def _llm_bench():
    """benchmarks/bench_llm_compare.py as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_llm", ROOT / "benchmarks/bench_llm_compare.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_llm_benchmark_table_reads_zero_shot_gains_ratios_and_the_paired_verdict(tmp_path):
    """benchmarks/bench_llm_compare.py's table, from a frontier's folders: the zero-shot row is round 0,
    each gain is over the same seed's round 0 in standard errors of one run's score, the byte ratios
    are the configs' mean totals, the paired difference is the frontier's."""
    from fedkron.sim.compare import parse_runs
    from fedkron.sim.frontier import run_frontier

    bench = _llm_bench()
    base = RunConfig(**BASE)
    run_frontier(base, parse_runs("kron-lora:nf4:r2,lora:fp32:r8,flowertune"), [0, 1, 2], tmp_path, run=fake_run)
    for summary in tmp_path.glob("seed*/*/summary.json"):  # a task whose constant answer scores 60 % (BoolQ's "yes")
        summary.write_text(json.dumps(json.loads(summary.read_text()) | {"majority_baseline": 0.6}))
    table = bench.llm_table(tmp_path)  # the standard errors use the rows each run scored: 400
    assert table["questions"] == [400]
    assert table["zero_shot"]["acc"] == 0.5 and table["zero_shot"]["standard_error"] == pytest.approx(0.025)
    rows = {r["config"]: r for r in table["configs"]}
    kron, ref = rows["kron-lora-nf4-r2"], rows["lora-fp32-r8"]
    finals = [_accuracy(RunConfig(**BASE, method="kron-lora", rank=2, uplink="nf4", seed=s), 3) for s in (0, 1, 2)]
    assert kron["acc"] == pytest.approx(sum(finals) / 3)
    assert kron["gain_in_se"] == pytest.approx((sum(finals) / 3 - 0.5) / 0.025)
    assert kron["seeds_above_noise"] == 3 and ref["x_vs_reference"] == 1.0
    assert kron["x_vs_reference"] == pytest.approx(ref["bytes_total"] / kron["bytes_total"])
    assert kron["x_vs_flowertune"] == pytest.approx(rows["flowertune"]["bytes_total"] / kron["bytes_total"])
    diff = kron["vs_reference"]["acc_diff_mean"]
    refs = [_accuracy(RunConfig(**BASE, method="lora", rank=8, uplink="fp32", seed=s), 3) for s in (0, 1, 2)]
    assert diff == pytest.approx(statistics.fmean(f - r for f, r in zip(finals, refs)))
    text = bench.markdown(table)
    assert "| zero-shot | 50.0" in text and f"{100 * diff:+.1f} ± " in text and "not shown within 1 point" in text
    assert table["majority"] == 0.6 and "| the majority answer, always (no model) | 60.0 |" in text
    assert f"{100 * (kron['acc'] - 0.6):+.1f} points against always giving the majority answer." in text
    assert "the answer prior" not in text  # 17.7 points above it: the task was learnt
    prior = bench.markdown(table | {"majority": kron["acc"] - 0.02})  # 2 points above a constant answer: under 3 SE
    assert "+2.0 points against always giving the majority answer, NOT beyond" in prior
    # --report-only rebuilds the same table from the folders alone: no task data needed
    env = {k: v for k, v in os.environ.items() if k != "FEDKRON_DATA_DIR"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/bench_llm_compare.py"), "--report-only", "--out", str(tmp_path),
         "--runs", "kron-lora:nf4:r2,lora:fp32:r8,flowertune"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "llm.md").read_text().startswith(text[:200])


def test_llm_benchmark_runs_resume_as_fedkron_frontier_runs_and_back():
    """The benchmark's run settings are exactly what `fedkron frontier` records for the same flags
    (the data folder left to FEDKRON_DATA_DIR in both), so --resume accepts either's run folders."""
    from fedkron.cli import build_parser, config_from_args
    from fedkron.server.checkpoint import PER_FOLDER  # what --resume does not compare (the folder)

    bench = _llm_bench()
    mine = bench.base_config(bench.parser().parse_args(["--lr", "2e-3", "--rank", "4"])).to_record()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**bench.DEFAULTS, "lr": 2e-3, "rank": 4}.items()]
    theirs = config_from_args(build_parser().parse_args(["frontier", *flags])).to_record()
    differ = sorted(k for k in mine if k not in PER_FOLDER and mine[k] != theirs[k])
    assert not differ and mine["data-dir"] == "" and mine["rank"] == 4 and mine["lr"] == 2e-3


def test_frontier_plot_labels_of_close_configs_go_on_separate_lines():
    """Labels within a tenth of a decade and 1.5 points of an earlier one move down a line each;
    labels far apart (in MB or in accuracy) stay where they are."""
    from fedkron.sim.plots import label_offsets

    points = [(0.50, 80.0), (0.52, 80.5), (0.55, 79.8), (5.0, 80.0), (0.51, 70.0)]
    assert label_offsets(points) == [(3, 3), (3, -5), (3, -13), (3, 3), (3, 3)]
    assert label_offsets([(1.0, 50.0), (1.0, 50.0), (100.0, 50.0)]) == [(3, 3), (3, -5), (3, 3)]
