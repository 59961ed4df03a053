"""PEFT interop: exported folders give the same logits under peft.PeftModel; import_peft reads them back."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from fedkron.adapters import (
    AdapterConfig,
    PeftExportError,
    adapter_layers,
    adapter_state_dict,
    export_peft,
    import_peft,
    inject,
    injected,
)

peft = pytest.importorskip("peft")

BERT = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=100)


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BERT).eval()


def logits(model) -> torch.Tensor:
    ids = torch.arange(2 * 9).reshape(2, 9) % 100
    with torch.no_grad():
        return model(input_ids=ids).logits


def trained(config: AdapterConfig, build=tiny_bert):
    """An injected model whose factors and head moved away from init, and an untouched base copy."""
    model = build()
    base = copy.deepcopy(model)
    inject(model, config)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for tensor in adapter_state_dict(model).values():
            tensor.add_(torch.randn(tensor.shape, generator=gen) * 0.2)
    return model, base


def peft_logits(base, path) -> torch.Tensor:
    return logits(peft.PeftModel.from_pretrained(base, str(path)).eval())


@pytest.mark.parametrize(
    "config,peft_type",
    [
        (AdapterConfig(method="lora", rank=4, alpha=8.0), "LORA"),
        (AdapterConfig(method="kron-lora", rank=8, shape_policy="peft"), "LOKR"),  # some PEFT w2 full
        (AdapterConfig(method="kron-lora", rank=2, shape_policy="peft"), "LOKR"),  # all w2 low-rank
        (AdapterConfig(method="kron-lora", rank=4, shape_policy="peft", decompose_factor=4), "LOKR"),
        (AdapterConfig(method="krona", rank=4, shape_policy="peft"), "LOKR"),
    ],
)
def test_native_export_gives_the_same_logits_in_peft(tmp_path, config, peft_type):
    model, base = trained(config)
    export_peft(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == peft_type
    expected = logits(model)
    assert not torch.allclose(expected, logits(base), atol=1e-3)  # the adapter and head matter
    torch.testing.assert_close(peft_logits(base, tmp_path), expected, rtol=1e-5, atol=1e-5)

    fresh = tiny_bert()
    import_peft(fresh, tmp_path, method=config.method)
    assert injected(fresh).config.method == config.method
    torch.testing.assert_close(logits(fresh), expected, rtol=1e-5, atol=1e-5)


def test_paper_shapes_refuse_lokr_but_export_exactly_as_lora(tmp_path):
    model, base = trained(AdapterConfig(method="kron-lora", rank=4))  # A is 1×2: no single PEFT factor
    with pytest.raises(PeftExportError, match="decompose_factor"):
        export_peft(model, tmp_path / "lokr")
    export_peft(model, tmp_path / "lora", format="lora")
    meta = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["r"] == 1 * 4  # rank min(a_out, a_in) · r
    torch.testing.assert_close(peft_logits(base, tmp_path / "lora"), logits(model), rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_exports_as_lora_with_fan_in_fan_out(tmp_path):
    def gpt2():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=16)).eval()

    model, base = trained(AdapterConfig(method="krona", rank=2, shape_policy="peft"), build=gpt2)
    with pytest.raises(PeftExportError, match="Conv1D"):
        export_peft(model, tmp_path / "lokr")
    export_peft(model, tmp_path / "lora", format="lora")
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    torch.testing.assert_close(peft_logits(base, tmp_path / "lora"), logits(model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["lokr", "lora"])
def test_import_an_adapter_made_by_peft_itself(tmp_path, kind):
    targets = ["query", "value", "intermediate.dense"]
    if kind == "lokr":  # r=2 keeps every w2 low-rank (see the mixed case below)
        peft_config = peft.LoKrConfig(r=2, alpha=6, target_modules=targets, modules_to_save=["classifier"])
    else:
        peft_config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=targets, modules_to_save=["classifier"])
    peft_model = peft.get_peft_model(tiny_bert(), peft_config)
    torch.manual_seed(3)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.2)
    peft_model.save_pretrained(str(tmp_path))
    ours = import_peft(tiny_bert(), tmp_path)
    assert len(adapter_layers(ours)) == 2 * 3 and injected(ours).modules_to_save == ["classifier"]
    torch.testing.assert_close(logits(ours), logits(peft_model.eval()), rtol=1e-5, atol=1e-5)


def test_import_rejects_other_peft_types_and_mismatched_models(tmp_path):
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(PeftExportError, match="IA3"):
        import_peft(tiny_bert(), tmp_path / "ia3")
    model, _ = trained(AdapterConfig(method="lora", rank=4))
    export_peft(model, tmp_path / "lora")
    other = inject(tiny_bert(), AdapterConfig(method="kron-lora", rank=4, shape_policy="peft"))
    with pytest.raises(PeftExportError, match="imports only as 'lora'"):
        import_peft(other, tmp_path / "lora")
    other = inject(tiny_bert(), AdapterConfig(method="lora", rank=4, alpha=4.0))
    with pytest.raises(PeftExportError, match="scaling 1, .* scaling 4"):
        import_peft(other, tmp_path / "lora")


def test_import_of_a_mixed_full_and_low_rank_lokr_says_why_it_cannot(tmp_path):
    """PEFT LoKr r=4 keeps w2 full (8×8, rank 8) on 64×64 layers but low-rank on 128×64 ones."""
    config = peft.LoKrConfig(r=4, alpha=4, target_modules=["query", "intermediate.dense"])
    peft_model = peft.get_peft_model(tiny_bert(), config)
    peft_model.save_pretrained(str(tmp_path))
    with pytest.raises(PeftExportError, match=r"query.lokr_w2 \(8, 8\) has rank above r=4"):
        import_peft(tiny_bert(), tmp_path)
