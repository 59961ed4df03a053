"""Run config and CLI: defaults, flag mapping, and bad input failing before Ray starts."""

import dataclasses
from pathlib import Path

import pytest
import tomllib

from fedkron.cli import build_parser, config_from_args, main
from fedkron.runconfig.choices import METHOD_DEFAULTS
from fedkron.runconfig.fields import TASK_DEFAULTS, ConfigError, RunConfig, bits_to_codec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "bits,quant,codec",
    [
        (4, None, "nf4"),
        (4, "fp4", "fp4"),
        (8, None, "int8"),
        (16, None, "fp16"),
        (16, "bf16", "bf16"),
        (32, None, "fp32"),
    ],
)
def test_bits_map_to_codecs(bits, quant, codec):
    assert bits_to_codec(bits, quant) == codec


def test_bits_reject_impossible_combinations():
    with pytest.raises(ConfigError, match="--bits 4 takes --uplink nf4 or fp4"):
        bits_to_codec(4, "int8")
    with pytest.raises(ConfigError, match="one of 4, 8, 16, 32"):
        bits_to_codec(3)


def test_no_flags_is_the_offline_default():
    cfg = config_from_args(build_parser().parse_args(["sim"])).resolved()
    assert (cfg.model, cfg.task, cfg.method, cfg.uplink, cfg.downlink) == (
        "minilm-l6",
        "sst2",
        "kron-lora",
        "nf4",
        "nf4",
    )
    assert cfg.clients == TASK_DEFAULTS["sst2"]["clients"] and cfg.rounds == TASK_DEFAULTS["sst2"]["rounds"]
    assert cfg.out == "results/sst2-kron-lora-nf4"


def test_flags_reach_the_config(tmp_path):
    args = build_parser().parse_args(
        [
            "sim",
            "--task",
            "sst2",
            "--method",
            "lora",
            "--bits",
            "32",
            "--clients",
            "7",
            "--rounds",
            "2",
            "--fraction",
            "0.5",
            "--local-steps",
            "3",
            "--batch-size",
            "4",
            "--max-length",
            "16",
            "--lr",
            "0.01",
            "--partition",
            "dirichlet",
            "--dirichlet-alpha",
            "0.3",
            "--seed",
            "5",
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--no-error-feedback",
            "--local-loss",
            "logit-adjusted",
        ]
    )
    cfg = config_from_args(args).resolved()
    assert (cfg.task, cfg.method, cfg.uplink, cfg.clients, cfg.rounds) == ("sst2", "lora", "fp32", 7, 2)
    assert (cfg.fraction, cfg.local_steps, cfg.batch_size, cfg.max_length, cfg.lr) == (0.5, 3, 4, 16, 0.01)
    assert (cfg.partition, cfg.dirichlet_alpha, cfg.seed, cfg.error_feedback) == ("dirichlet", 0.3, 5, False)
    assert cfg.local_loss == "logit-adjusted"


def test_every_problem_is_reported_at_once():
    cfg = RunConfig(
        task="nope",
        method="kron",
        rank=-1,
        fraction=1.5,
        uplink="int3",
        clients=2,
        rounds=1,
        local_steps=1,
        max_length=32,
        data_dir="/definitely/missing",
        local_loss="focal",
        strategy="fedsgd",
        dp_noise=1.0,
    )
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    text = str(info.value)
    for fragment in (
        "task 'nope'",
        "method 'kron'",
        "rank must be ≥ 1",
        "fraction must be in (0, 1]",
        "'int3'",
        "data-dir '/definitely/missing'",
        "local-loss 'focal'",
        "strategy 'fedsgd'",
        "dp-noise needs a clipping norm",
    ):
        assert fragment in text


def test_cli_fails_before_ray_with_a_clear_message(capsys, monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("the simulation started")

    monkeypatch.setattr("flwr.simulation.run_simulation", started)  # must never be reached
    with pytest.raises(SystemExit) as info:
        main(["sim", "--rank", "-1", "--method", "dora"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "rank must be ≥ 1" in err and "method 'dora'" in err


def test_the_old_uplink_name_still_reads_until_it_is_removed():
    """``quant`` (0.1's name of the uplink codec) in an older config.json or ``--quant`` on the CLI."""
    assert RunConfig.from_mapping({"quant": "int8"}).uplink == "int8"
    assert config_from_args(build_parser().parse_args(["sim", "--quant", "fp4"])).uplink == "fp4"
    with pytest.raises(ConfigError, match="unknown run-config keys: server-opt"):
        RunConfig.from_mapping({"server-opt": "sgd"})


def test_cosine_schedule_is_flowertunes():
    cfg = RunConfig(task="sst2", rounds=5, lr=0.01, lr_min=0.001, lr_schedule="cosine")
    lrs = [cfg.round_lr(r) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(0.01) and lrs == sorted(lrs, reverse=True) and lrs[-1] > 0.001
    assert lrs[2] == pytest.approx(0.001 + 0.5 * 0.009 * (1 + __import__("math").cos(__import__("math").pi * 2 / 5)))
    assert RunConfig(lr=0.01).round_lr(3) == 0.01


def test_run_config_round_trips_through_flower_records():
    cfg = RunConfig(task="sst2", rank=4, alpha=8.0, error_feedback=False, clients=3, rounds=2, local_steps=5)
    again = RunConfig.from_mapping(cfg.to_record())
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown run-config keys: bogus"):
        RunConfig.from_mapping({"bogus": 1})
    with pytest.raises(ConfigError, match="'rank': cannot read 'x' as int"):
        RunConfig.from_mapping({"rank": "x"})


def test_flower_app_config_is_the_run_config_at_its_defaults():
    """``[tool.flwr.app.config]`` holds every RunConfig field, each at its default (Flower rejects
    --run-config keys it lacks, and a default written twice would drift)."""
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert set(app_config) == set(RunConfig().to_record())
    assert RunConfig.from_mapping(app_config) == RunConfig()


def test_cli_reference_flag_table_is_the_parsers():
    """docs/cli.md's flag table of ``fedkron sim`` is made from the parser, so it lists every flag
    with the help and default the CLI has (regenerate: python scripts/sync_docs.py)."""
    from fedkron.cli import flag_table

    reference = (ROOT / "docs" / "cli.md").read_text()
    assert flag_table() in reference


def test_every_run_config_field_is_a_flag_or_app_only():
    parser = build_parser()
    sim = parser._subparsers._group_actions[0].choices["sim"]
    flags = {o for a in sim._actions for o in a.option_strings}
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        assert (flag in flags) == f.metadata["cli"] or f.name == "resume", f.name  # sim's --resume takes a folder


def test_the_model_cache_key_covers_everything_build_model_reads():
    """A warm worker keys its cached model by MODEL_FIELDS: build_model must read no other field
    (mc_head was once missing from the key, so a warm worker could serve the wrong model)."""
    from fedkron.models import MODEL_FIELDS, build_model

    read = set()

    class Recording:
        def __init__(self, cfg):
            object.__setattr__(self, "_cfg", cfg)

        def __getattr__(self, name):
            read.add(name)
            return getattr(self._cfg, name)

    for method, mc in (("kron-lora", False), ("lora", True)):
        cfg = RunConfig(model="tiny-bert", task="arc-easy" if mc else "sst2", method=method, mc_head="dual")
        build_model(Recording(cfg), num_labels=4 if mc else 2, multiple_choice=mc)
    assert read and read <= set(MODEL_FIELDS), read - set(MODEL_FIELDS)


def test_compare_runs_parse_and_share_everything_but_method_codecs_and_aggregation(tmp_path):
    from fedkron.sim.compare import LoraSettings, parse_runs, run_configs

    specs = parse_runs("kron-lora:nf4:exact, lora:fp32, krona:int8, flowertune, ffa-lora:nf4")
    assert [s.label for s in specs] == ["kron-lora:nf4:exact", "lora:fp32", "krona:int8", "flowertune", "ffa-lora:nf4"]
    base = RunConfig(task="sst2", seed=3, clients=5, rounds=2, local_steps=4, partition="dirichlet", rank=4, lr=0.004)
    cfgs = run_configs(base, specs, tmp_path, LoraSettings(rank=16, lr=0.001))
    got = [(c.method, c.uplink, c.downlink, c.aggregation, c.rank, c.targets, c.lr) for c in cfgs]
    assert got == [
        ("kron-lora", "nf4", "nf4", "exact", 4, "all-linear", 0.004),
        ("lora", "fp32", "fp32", "per-factor", 16, "all-linear", 0.001),
        ("krona", "int8", "int8", "per-factor", 4, "all-linear", 0.004),
        ("lora", "fp32", "fp32", "per-factor", 16, "query,value", 0.001),  # FlowerTune's recipe
        ("lora", "nf4", "nf4", "exact", 16, "all-linear", 0.001),
    ]  # FFA-LoRA
    assert {(c.seed, c.clients, c.rounds, c.partition, c.task) for c in cfgs} == {(3, 5, 2, "dirichlet", "sst2")}
    assert [c.out for c in cfgs] == [
        str(tmp_path / f) for f in ("kron-lora-nf4-exact", "lora-fp32", "krona-int8", "flowertune", "ffa-lora-nf4")
    ]
    assert run_configs(base, specs[:1], tmp_path, downlink="fp32")[0].downlink == "fp32"  # --downlink wins
    llm = dataclasses.replace(base, model="tiny-llama", task="arc-easy")
    (ft, ft_named) = run_configs(llm, parse_runs("flowertune,flowertune:k_proj"), tmp_path, LoraSettings())
    assert (ft.targets, ft_named.targets) == ("q_proj,v_proj", "k_proj")  # a decoder names q,v its own way
    (alt,) = run_configs(RunConfig(task="sst2"), parse_runs("kron-lora:nf4:alternating"), tmp_path, LoraSettings())
    alt_lr = METHOD_DEFAULTS["kron-lora"]["lr"]["alternating"]
    assert (alt.aggregation, alt.lr, alt.out) == ("alternating", alt_lr, str(tmp_path / "kron-lora-nf4-alternating"))
    with pytest.raises(ConfigError) as info:
        parse_runs("dora:nf4,lora:int3,lora:fp32,lora:fp32")
    assert "method 'dora'" in str(info.value) and "codec 'int3'" in str(info.value) and "twice" in str(info.value)


def _checkpoint_folder(out: Path, rnd: int) -> None:
    """A checkpoint folder as save_checkpoint leaves it (its files' presence is what is looked at
    here), named by checkpoint/latest.json."""
    import json

    folder = out / "checkpoint" / f"round-{rnd}"
    folder.mkdir(parents=True)
    for name in ("state.json", "global.safetensors", "rng.safetensors"):
        (folder / name).write_text("")
    (out / "checkpoint" / "latest.json").write_text(json.dumps({"round": rnd, "folder": folder.name}))


def test_resume_takes_the_saved_config_and_only_rounds_to_extend(tmp_path):
    import json

    from fedkron.cli import resume_config

    saved = RunConfig(task="sst2", clients=5, rounds=3, local_steps=2, lr=0.01, out=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(saved.to_record()))
    _checkpoint_folder(tmp_path, 2)
    parse = build_parser().parse_args

    cfg = resume_config(parse(["sim", "--resume", str(tmp_path)]))  # killed after round 2
    assert (cfg.resume, cfg.rounds, cfg.lr, cfg.clients) == (True, 3, 0.01, 5)
    with pytest.raises(ConfigError, match="only --rounds may be given"):
        resume_config(parse(["sim", "--resume", str(tmp_path), "--lr", "0.1"]))

    _checkpoint_folder(tmp_path, 3)
    with pytest.raises(ConfigError, match=r"all 3 rounds are done; add --rounds N \(N > 3\)"):
        resume_config(parse(["sim", "--resume", str(tmp_path)]))
    with pytest.raises(ConfigError, match="N > 3"):
        resume_config(parse(["sim", "--resume", str(tmp_path), "--rounds", "3"]))
    assert resume_config(parse(["sim", "--resume", str(tmp_path), "--rounds", "5"])).rounds == 5


def test_resume_plan_reads_a_run_folder_and_takes_keys_it_predates_at_their_default(tmp_path):
    import dataclasses
    import json

    from fedkron.sim.compare import parse_runs, resume_plan, run_configs

    cfg = run_configs(
        RunConfig(model="tiny-bert", task="boolq", clients=2, rounds=2), parse_runs("lora:fp32"), tmp_path
    )[0]
    folder = Path(cfg.out)
    assert resume_plan(cfg) == "fresh"  # nothing there yet
    folder.mkdir(parents=True)
    saved = cfg.to_record()
    del saved["local-opt"]  # written before that setting existed: it ran AdamW, today's default
    saved["out"], saved["client-state-dir"] = "elsewhere", "elsewhere/client-state"
    (folder / "config.json").write_text(json.dumps(saved))
    assert resume_plan(cfg) == "restart"  # started (or failed) before its first checkpoint
    _checkpoint_folder(folder, 1)
    assert resume_plan(cfg) == "resume"
    _checkpoint_folder(folder, 2)
    assert resume_plan(cfg) == "resume"  # all rounds checkpointed but no summary: the end was cut off
    (folder / "summary.json").write_text("{}")
    assert resume_plan(cfg) == "done"
    with pytest.raises(ConfigError, match="local-opt 'adamw' \\(now 'sgd'\\)"):
        resume_plan(dataclasses.replace(cfg, local_opt="sgd"))
    with pytest.raises(ConfigError, match="rounds 2 \\(now 1\\)"):
        resume_plan(dataclasses.replace(cfg, rounds=1))


def test_resume_starts_again_a_run_that_failed_before_its_first_checkpoint_and_keeps_refusing_others(
    tmp_path,
):
    """A folder whose run (same settings) stopped before round 1 was checkpointed has nothing to keep:
    --resume starts it again in place; without --resume, or with no config.json to prove the
    settings, the folder is refused as before."""
    import json

    from fedkron.sim.compare import job_config, parse_runs, plan_runs, run_configs

    base = RunConfig(model="tiny-bert", task="boolq", clients=2, rounds=2)
    cfg = run_configs(base, parse_runs("lora:fp32"), tmp_path)[0]
    folder = Path(cfg.out)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_record()))
    (folder / "metrics.jsonl").write_text('{"round": 0, "accuracy": 0.5}\n')
    (folder / "summary.json").write_text('{"status": "failed", "rounds_completed": 0}')
    with pytest.MonkeyPatch.context() as mp:
        import fedkron.sim.compare as compare

        mp.setattr(compare, "model_problems", lambda c: [])
        mp.setattr(compare, "data_problems", lambda c: [])
        assert plan_runs([cfg], True, "frontier") == ["restart"]
        job = job_config(cfg, "restart")
        assert (job.overwrite, job.resume) == (True, False)
        with pytest.raises(ConfigError, match="holds a run"):
            plan_runs([cfg], False, "frontier")
        (folder / "config.json").unlink()
        with pytest.raises(ConfigError, match="holds a run"):
            plan_runs([cfg], True, "frontier")


def test_compare_refuses_a_results_folder_it_cannot_write_before_any_run(tmp_path, monkeypatch):
    """Every run folder of a compare / frontier is probed as `fedkron sim` probes its own, and all
    the refusals come together before the first run starts."""
    import fedkron.sim.compare as compare
    from fedkron.sim.compare import parse_runs, plan_runs, run_configs

    monkeypatch.setattr(compare, "model_problems", lambda c: [])
    monkeypatch.setattr(compare, "data_problems", lambda c: [])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfgs = run_configs(RunConfig(model="tiny-bert", task="sst2"), parse_runs("lora:fp32,kron-lora:nf4"), blocker)
    with pytest.raises(ConfigError) as info:
        plan_runs(cfgs, False, "comparison")
    assert all(f"results folder {c.out} cannot be written" in str(info.value) for c in cfgs)
    assert plan_runs(
        run_configs(RunConfig(model="tiny-bert", task="sst2"), parse_runs("lora:fp32"), tmp_path), False, "x"
    ) == ["fresh"]


def test_a_refused_grid_leaves_no_empty_run_folders(tmp_path, monkeypatch):
    """The probe makes each run's folder to write into it; when the grid is refused (here: the model
    of the second run), the folders it made are gone and a folder that existed stays."""
    import fedkron.sim.compare as compare
    from fedkron.sim.compare import parse_runs, plan_runs, run_configs

    monkeypatch.setattr(compare, "model_problems", lambda c: ["no model"] if c.method == "kron-lora" else [])
    monkeypatch.setattr(compare, "data_problems", lambda c: [])
    (tmp_path / "mine").mkdir()
    out = tmp_path / "mine" / "grid"
    cfgs = run_configs(RunConfig(model="tiny-bert", task="sst2"), parse_runs("lora:fp32,kron-lora:nf4"), out)
    with pytest.raises(ConfigError, match="no model"):
        plan_runs(cfgs, False, "frontier")
    assert [p.name for p in tmp_path.rglob("*")] == ["mine"]
