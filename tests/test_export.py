"""``fedkron export`` / ``fedkron evaluate`` / ``--save-every`` on tiny finished runs (tiny-bert on the
embedded SST-2; the run folders are built directly: a config, a completed summary and trained-looking
factors), and a PEFT folder read back by PEFT itself in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedkron.adapters import adapter_factor_roles, adapter_state_dict, save_adapter
from fedkron.adapters.model import FULL_ROLE, remove_adapters
from fedkron.cli import main
from fedkron.compression import get_codec
from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.server.checkpoint import keep_round_adapter, kept_rounds
from fedkron.sim.export import QUANTIZED_NAME, ExportError, export_run, load_exported, load_run

pytest.importorskip("peft")


def _cfg(out: Path, **kw) -> RunConfig:
    values = dict(model="tiny-bert", task="sst2", clients=2, rounds=2, max_length=16, eval_samples=24, out=str(out))
    return RunConfig(**{**values, **kw}).resolved()


def finished_run(out: Path, seed: int = 7, **kw) -> RunConfig:
    """A results folder as a completed run leaves it: config.json, summary.json, adapter/."""
    from fedkron.data.client_data import model_shape
    from fedkron.models import build_model

    cfg = _cfg(out, **kw)
    model = build_model(cfg, *model_shape(cfg))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # factors (and head) away from their init, as training leaves them
        for tensor in adapter_state_dict(model).values():
            tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.2)
    out.mkdir(parents=True, exist_ok=True)
    save_adapter(model, out / "adapter")
    (out / "config.json").write_text(json.dumps(cfg.to_record()))
    (out / "summary.json").write_text(json.dumps({"status": "completed", "method": cfg.method}))
    return cfg


def _logits(model) -> torch.Tensor:
    ids = (torch.arange(2 * 9).reshape(2, 9) * 7) % 1000
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def _factors(model) -> dict[str, torch.Tensor]:
    roles = adapter_factor_roles(model)
    return {k: v.detach().clone() for k, v in adapter_state_dict(model).items() if roles[k] != FULL_ROLE}


FRESH = textwrap.dedent(
    """
    import sys, torch
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForSequenceClassification as Auto
    base_dir, out, *folders = sys.argv[1:]
    ids = (torch.arange(2 * 9).reshape(2, 9) * 7) % 1000
    found = {}
    for i, folder in enumerate(folders):
        if folder.endswith("merged"):
            model = Auto.from_pretrained(folder)
        else:
            model = PeftModel.from_pretrained(Auto.from_pretrained(base_dir), folder)
        with torch.no_grad():
            found[str(i)] = model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    save_file(found, out)
    """
)


@pytest.mark.slow  # one fresh Python importing transformers + PEFT (~15 s on a busy machine)
def test_peft_and_merged_exports_give_fedkron_logits_in_a_fresh_process(tmp_path, capsys):
    kron = finished_run(tmp_path / "kron", method="kron-lora", shape_policy="peft")
    finished_run(tmp_path / "lora", method="lora", rank=4)
    assert main(["export", str(tmp_path / "kron"), "--out", str(tmp_path / "kron-peft")]) == 0
    assert "peft LoKr" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "lora"), "--out", str(tmp_path / "lora-peft")]) == 0
    assert "peft LoRA" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "kron"), "--merged", "--out", str(tmp_path / "kron-merged")]) == 0
    base = load_run(tmp_path / "kron").model  # the run's frozen base and head class, adapters removed
    remove_adapters(base)
    base.save_pretrained(str(tmp_path / "base"))
    folders = [tmp_path / "kron-peft", tmp_path / "lora-peft", tmp_path / "kron-merged"]
    script = [sys.executable, "-c", FRESH, str(tmp_path / "base"), str(tmp_path / "out.safetensors")]
    subprocess.run(script + [str(f) for f in folders], check=True, timeout=300)
    found = load_file(str(tmp_path / "out.safetensors"))
    ours = [_logits(load_run(tmp_path / run).model) for run in ("kron", "lora", "kron")]
    for i, expected in enumerate(ours):
        assert not torch.allclose(expected, _logits(base), atol=1e-3)  # the adapter matters
        torch.testing.assert_close(found[str(i)], expected, atol=1e-5, rtol=0)
    assert kron.shape_policy == "peft"


def test_paper_shapes_export_as_exact_lora_and_say_why(tmp_path):
    finished_run(tmp_path / "run", method="kron-lora")
    done = export_run(tmp_path / "run", tmp_path / "out", "peft")
    assert done.kind == "peft LoRA" and "decompose_factor" in done.why
    meta = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["modules_to_save"] == ["classifier"]


def test_nf4_fedkron_export_is_smaller_and_loads_the_codec_round_trip(tmp_path):
    finished_run(tmp_path / "run", method="kron-lora")
    fp32 = export_run(tmp_path / "run", tmp_path / "fp32", "fedkron", precision="fp32")
    nf4 = export_run(tmp_path / "run", tmp_path / "nf4", "fedkron", precision="nf4")
    assert nf4.files[QUANTIZED_NAME] < fp32.files["adapter_model.safetensors"] / 2
    assert nf4.files[QUANTIZED_NAME] == (tmp_path / "nf4" / QUANTIZED_NAME).stat().st_size
    run = load_run(tmp_path / "run")
    original = _factors(run.model)
    expected = get_codec("nf4").decode(get_codec("nf4").encode(original))
    head = run.model.classifier.weight.detach().clone()
    fresh = load_run(tmp_path / "run").model
    load_exported(fresh, tmp_path / "nf4")
    loaded = _factors(fresh)
    assert loaded.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(loaded[name], expected[name], atol=0, rtol=0)
    assert any(not torch.equal(loaded[n], original[n]) for n in original)  # nf4 did change them
    torch.testing.assert_close(fresh.classifier.weight, head, atol=0, rtol=0)  # the head stays fp32
    load_exported(fresh, tmp_path / "fp32")
    for name, value in _factors(fresh).items():
        torch.testing.assert_close(value, original[name], atol=0, rtol=0)


def test_bf16_peft_export_stores_bf16(tmp_path):
    finished_run(tmp_path / "run", method="lora", rank=4)
    export_run(tmp_path / "run", tmp_path / "out", "peft", precision="bf16")
    tensors = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert {t.dtype for k, t in tensors.items() if "lora_" in k} == {torch.bfloat16}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--precision", "int3"], "--precision 'int3' is not one of"),
        (["--format", "onnx"], "--format 'onnx' is not one of"),
        (["--merged", "--precision", "nf4"], "--merged writes float weights"),
        (["--round", "4"], "no adapter kept for round 4; kept rounds: none"),
    ],
)
def test_bad_flags_are_refused_before_any_work(tmp_path, capsys, argv, message):
    finished_run(tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")] + argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unfinished_runs_and_non_empty_outputs_are_refused(tmp_path):
    cfg = finished_run(tmp_path / "run")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    with pytest.raises(ExportError, match="not a finished run .*'interrupted'"):
        export_run(tmp_path / "run", tmp_path / "out")
    with pytest.raises(ExportError, match="no config.json"):
        export_run(tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"status": "completed"}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; pass --overwrite"):
        export_run(tmp_path / "run", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    done = export_run(tmp_path / "run", tmp_path / "out", "fedkron", overwrite=True)
    assert set(done.files) == {"adapter_config.json", "adapter_model.safetensors", "fedkron_export.json"}
    assert issubclass(ExportError, ConfigError) and cfg.method == "kron-lora"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_save_every_keeps_exactly_every_nth_round(tmp_path, monkeypatch):
    """run_federation with Flower's round loop stood in for: rounds 1..7 evaluated, --save-every 3."""
    from test_settings_honoured import FakeGrid

    from fedkron.server import federation

    cfg = _cfg(tmp_path / "run", rounds=7, save_every=3, central_eval=False, fraction_evaluate=0.5)
    seen = {}

    def rounds(strategy, grid, arrays, first, last, evaluate_fn, timeout):
        for rnd in range(first, last + 1):
            state = {k: v + rnd for k, v in strategy.global_state.items()}
            seen[rnd] = state
            evaluate_fn(rnd, federation.to_arrayrecord(state))

    monkeypatch.setattr(federation, "run_rounds", rounds)
    federation.run_federation(FakeGrid(cfg.clients), cfg)
    assert kept_rounds(tmp_path / "run") == [3, 6]
    assert sorted(p.name for p in (tmp_path / "run" / "adapters").iterdir()) == [
        "round-003.safetensors",
        "round-006.safetensors",
    ]
    kept = load_file(str(tmp_path / "run" / "adapters" / "round-006.safetensors"))
    for name, value in seen[6].items():
        torch.testing.assert_close(kept[name], value, atol=0, rtol=0)
    run = load_run(tmp_path / "run", rnd=3)  # export --round 3 reads that one
    for name, value in adapter_state_dict(run.model).items():
        torch.testing.assert_close(value, seen[3][name], atol=0, rtol=0)


def test_save_every_must_not_be_negative(tmp_path):
    with pytest.raises(ConfigError, match="save-every must be ≥ 0"):
        _cfg(tmp_path, save_every=-1)


def test_export_round_writes_that_rounds_adapter(tmp_path):
    cfg = finished_run(tmp_path / "run", method="lora", rank=4)
    run = load_run(tmp_path / "run")
    state = {k: torch.full_like(v, 0.01) for k, v in adapter_state_dict(run.model).items()}
    keep_round_adapter(tmp_path / "run", 2, state, cfg.to_record())
    export_run(tmp_path / "run", tmp_path / "out", "fedkron", rnd=2)
    tensors = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert all(torch.all(t == 0.01) for t in tensors.values())
    assert json.loads((tmp_path / "out" / "fedkron_export.json").read_text())["round"] == 2


def test_precision_table_fp32_is_exact_and_errors_grow_with_fewer_bits(tmp_path):
    from fedkron.data.client_data import eval_data
    from fedkron.sim.precision import evaluate_precisions
    from fedkron.training.local import evaluate_metrics

    finished_run(tmp_path / "run", method="kron-lora")
    run = load_run(tmp_path / "run")
    plain = evaluate_metrics(run.model, eval_data(run.cfg).data)
    table = evaluate_precisions(tmp_path / "run", ["fp32", "bf16", "int8", "nf4"])
    rows = {r["precision"]: r for r in table["rows"]}
    assert rows["fp32"]["accuracy"] == plain["accuracy"] and rows["fp32"]["loss"] == plain["loss"]
    errors = [rows[p]["factor_rel_error"] for p in ("fp32", "bf16", "int8", "nf4")]
    assert errors[0] == 0.0 and errors == sorted(errors) and errors[1] > 0
    sizes = [rows[p]["adapter_bytes"] for p in ("fp32", "bf16", "int8", "nf4")]
    assert sizes == sorted(sizes, reverse=True)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision_robustness"]["rows"] == table["rows"] and summary["status"] == "completed"


def test_compare_report_has_an_adapter_precision_section(tmp_path):
    from fedkron.sim.report import precision_section

    table = {"rows": [{"precision": p, "accuracy": a, "loss": 0.5, "factor_rel_error": e, "adapter_bytes": b}
                      for p, a, e, b in (("fp32", 0.8, 0.0, 4000), ("nf4", 0.75, 0.1, 700))]}  # fmt: skip
    rows = [
        {"run": "kron-lora-nf4", "method": "kron-lora", "precision_robustness": table},
        {"run": "lora-fp32", "method": "lora", "precision_robustness": None},
    ]
    text = precision_section(rows)
    assert "## Adapter precision" in text and "| kron-lora-nf4 | kron-lora | nf4 | 75.0% | -5.0 pt | 700 |" in text
    assert "lora-fp32" not in text and precision_section(rows[1:]) == ""


def test_round_adapters_are_written_whole(tmp_path):
    keep_round_adapter(tmp_path, 5, {"a": torch.arange(3.0)}, {"method": "lora"})
    assert kept_rounds(tmp_path) == [5] and not [p for p in (tmp_path / "adapters").iterdir() if p.name[0] == "."]


def test_compare_precision_eval_scores_finished_runs_and_names_the_others(tmp_path, capsys):
    from fedkron.sim.compare import evaluate_finished

    finished_run(tmp_path / "lora", method="lora", rank=4)
    finished_run(tmp_path / "cut", method="kron-lora")
    (tmp_path / "cut" / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    evaluate_finished([tmp_path / "cut", tmp_path / "lora"])
    rows = json.loads((tmp_path / "lora" / "summary.json").read_text())["precision_robustness"]["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16", "int8", "nf4", "fp4"]
    assert "precision_robustness" not in json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert "run cut: no precision table" in capsys.readouterr().out
