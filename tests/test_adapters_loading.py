"""Loading adapter folders (fedkron and PEFT): every check before injection, nothing left behind on failure."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification

from fedkron.adapters import (
    AdapterConfig,
    AdapterConfigError,
    AdapterStateError,
    PeftExportError,
    adapter_layers,
    adapter_state_dict,
    export_peft,
    import_peft,
    inject,
    load_adapter,
    peft_interop,
    save_adapter,
    storage,
)
from fedkron.adapters.model import STATE_ATTR

BERT = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=100)


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BERT).eval()


def snapshot(model) -> dict:
    """What a failed load must not change: module objects, parameter names, trainable flags, values."""
    return {
        "modules": {n: id(m) for n, m in model.named_modules()},
        "params": {n: (p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()},
        "record": getattr(model, STATE_ATTR, None),
    }


def assert_untouched(model, before: dict) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"] and after["record"] is before["record"]
    assert list(after["params"]) == list(before["params"])
    for name, (flag, value) in before["params"].items():
        assert after["params"][name][0] == flag and torch.equal(after["params"][name][1], value), name


@pytest.fixture
def saved(tmp_path):
    model = inject(tiny_bert(), AdapterConfig(method="kron-lora", rank=4, shape_policy="peft"))
    return save_adapter(model, tmp_path / "adapter")


def edit_meta(folder, edit) -> None:
    path = folder / storage.CONFIG_NAME
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("method", ["kron-lora", "krona", "lora"])
@pytest.mark.parametrize("policy", ["paper", "peft"])
def test_planned_shapes_are_what_inject_builds(method, policy):
    config = AdapterConfig(method=method, rank=3, shape_policy=policy)
    model = tiny_bert()
    targets, saved, planned = storage.adapter_plan(model, config)
    assert not adapter_layers(model)  # planning injects nothing
    inject(model, config)
    assert planned == {k: tuple(v.shape) for k, v in adapter_state_dict(model).items()}
    assert storage.adapter_plan(model, config)[2] == planned


def test_a_tampered_huge_rank_is_refused_before_anything_is_allocated_or_injected(saved):
    edit_meta(saved, lambda m: m["config"].update(rank=10**9))  # 10^9 × 64 float32 per factor: 256 GB
    model = tiny_bert()
    before = snapshot(model)
    with pytest.raises(
        AdapterStateError, match=r"kron_B1' has shape \(\d+, 4\), the model expects \(\d+, 1000000000\)"
    ):
        load_adapter(model, saved)
    assert_untouched(model, before)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.pop("targets"), "field 'targets' must be a list"),
        (lambda m: m.update(modules_to_save="classifier"), "field 'modules_to_save' must be a list"),
        (lambda m: m.pop("config"), "field 'config' must be an AdapterConfig"),
        (lambda m: m["config"].update(rank="4"), "rank must be a positive int, got '4'"),
        (lambda m: m["config"].update(rank=0), "rank must be a positive int, got 0"),
        (lambda m: m["config"].update(alpha="big"), "alpha must be a finite number"),
        (lambda m: m["config"].update(dropout=None), "dropout must be a number"),
        (lambda m: m["config"].update(factor_shapes={"query": 3}), r"factor_shapes\['query'\]"),
        (lambda m: m["config"].update(target_modules=[1, 2]), "target_modules must be"),
        (lambda m: m["config"].update(init_seed="x"), "init_seed must be"),
        (lambda m: m["config"].update(ranq=4), "unknown AdapterConfig keys"),
    ],
)
def test_bad_config_fields_are_named(saved, edit, match):
    edit_meta(saved, edit)
    model = tiny_bert()
    before = snapshot(model)
    with pytest.raises(AdapterConfigError, match=match):
        load_adapter(model, saved)
    assert_untouched(model, before)


def test_unreadable_files_are_named(saved):
    model = tiny_bert()
    weights = saved / storage.WEIGHTS_NAME
    good = weights.read_bytes()
    weights.write_bytes(good[:-10])
    with pytest.raises(AdapterStateError, match="not a readable safetensors file"):
        load_adapter(model, saved)
    header = json.dumps({"x": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    weights.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(AdapterStateError, match="'x' has dtype I64"):
        load_adapter(model, saved)
    weights.unlink()
    with pytest.raises(AdapterStateError, match="no adapter_model.safetensors"):
        load_adapter(model, saved)
    (saved / storage.CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterConfigError, match="is not JSON"):
        load_adapter(model, saved)
    assert not adapter_layers(model) and getattr(model, STATE_ATTR, None) is None


def test_weights_that_differ_from_the_config_are_refused_from_the_header(saved):
    weights = saved / storage.WEIGHTS_NAME
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("kron_A"))
    model = tiny_bert()
    before = snapshot(model)
    for changed, match in [
        ({**tensors, name: torch.zeros(5, 5)}, rf"{name}' has shape \(5, 5\)"),
        ({k: v for k, v in tensors.items() if k != name}, "missing 1"),
        ({**tensors, "bert.pooler.dense.weight": torch.zeros(64, 64)}, "unexpected 1"),
    ]:
        save_file(changed, str(weights))
        with pytest.raises(AdapterStateError, match=match):
            load_adapter(model, saved)
        assert_untouched(model, before)


def test_a_load_that_fails_after_injection_removes_the_adapters(saved, monkeypatch):
    model = tiny_bert()
    before = snapshot(model)

    def broken(path):
        raise OSError(f"disk gone while reading {path}")

    monkeypatch.setattr(storage, "load_file", broken)
    with pytest.raises(OSError, match="disk gone"):
        load_adapter(model, saved)
    assert_untouched(model, before)
    monkeypatch.undo()
    assert len(adapter_layers(load_adapter(model, saved))) == 2 * 6  # and it still loads afterwards


def test_an_injected_model_keeps_its_adapters_when_a_load_fails(saved):
    model = inject(tiny_bert(), AdapterConfig(method="kron-lora", rank=4, shape_policy="peft"))
    edit_meta(saved, lambda m: m["targets"].pop())
    before = snapshot(model)
    with pytest.raises(AdapterStateError, match="targets differ"):
        load_adapter(model, saved)
    assert_untouched(model, before)


@pytest.fixture
def peft_lora(tmp_path):
    model = inject(tiny_bert(), AdapterConfig(method="lora", rank=4, alpha=8.0))
    return export_peft(model, tmp_path / "lora")


@pytest.mark.parametrize(
    "edit, error, match",
    [
        (lambda m: m.pop("r"), PeftExportError, "field 'r' must be a positive int, got None"),
        (lambda m: m.update(r=0, use_rslora=True), PeftExportError, "field 'r' must be a positive int, got 0"),
        (lambda m: m.update(r=True), PeftExportError, "field 'r' must be a positive int"),
        (lambda m: m.update(lora_alpha=float("nan")), PeftExportError, "field 'lora_alpha' must be a finite number"),
        (
            lambda m: m.update(r=10**9),
            AdapterStateError,
            r"lora_A' has shape \(4, 64\), the model expects \(1000000000, 64\)",
        ),
    ],
)
def test_bad_peft_configs_are_refused_before_injection(peft_lora, edit, error, match):
    edit_meta(peft_lora, edit)
    model = tiny_bert()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        import_peft(model, peft_lora)
    assert_untouched(model, before)


def test_a_peft_import_that_fails_late_leaves_no_adapters(peft_lora, monkeypatch):
    model = tiny_bert()
    before = snapshot(model)

    def refuse(model_, state):
        raise AdapterStateError("refused at the last step")

    monkeypatch.setattr(peft_interop, "load_adapter_state_dict", refuse)
    with pytest.raises(AdapterStateError, match="last step"):
        import_peft(model, peft_lora)
    assert_untouched(model, before)


def test_a_full_w2_splits_exactly_even_when_r_exceeds_its_smaller_side():
    w2 = torch.randn(4, 3) @ torch.randn(3, 256)
    b1, b2 = peft_interop._split_rank("layer", w2, 200)
    assert b1.shape == (4, 200) and b2.shape == (200, 256)
    torch.testing.assert_close(b1 @ b2, w2, rtol=1e-5, atol=1e-5)
