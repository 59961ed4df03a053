"""fedkron.adapters core: structured forward vs dense ΔW, init, merge, state dicts, save/load, counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForMultipleChoice,
    GPT2Config,
    GPT2LMHeadModel,
    MistralConfig,
    MistralForCausalLM,
)
from transformers.pytorch_utils import Conv1D

from fedkron.adapters import (
    AdapterConfig,
    AdapterConfigError,
    AdapterStateError,
    FactorShapeError,
    KronALayer,
    KronLoRALayer,
    KronShape,
    LoRALayer,
    TargetError,
    adapter_factor_roles,
    adapter_layers,
    adapter_state_dict,
    inject,
    injected,
    load_adapter,
    load_adapter_state_dict,
    merge,
    save_adapter,
    trainable_parameter_count,
    unmerge,
)

TINY_BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=100)
SMALL = settings(max_examples=30, deadline=None)


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**TINY_BERT)).eval()


def randomize(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter tensor non-zero values so ΔW ≠ 0 and errors would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in adapter_state_dict(model).values():
            tensor.copy_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype) * 0.1)


def logits(model: nn.Module) -> torch.Tensor:
    ids = torch.arange(2 * 7).reshape(2, 7) % 100
    with torch.no_grad():
        return model(input_ids=ids).logits


@st.composite
def layer_case(draw, method: str, conv1d: bool = False):
    a_out, a_in = draw(st.integers(1, 4)), draw(st.integers(1, 7))  # a_in > 4: Kron-LoRA's unfused path
    b_out, b_in = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rank = draw(st.integers(1, 4))
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    bias = draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    shape = KronShape(a_out, a_in, b_out, b_in)
    if conv1d:
        base = Conv1D(shape.d_out, shape.d_in).double()
        nn.init.normal_(base.weight)
        nn.init.normal_(base.bias)
    else:
        base = nn.Linear(shape.d_in, shape.d_out, bias=bias).double()
    if method == "lora":
        layer = LoRALayer(base, rank, alpha=3.0)
    else:
        layer = (KronLoRALayer if method == "kron-lora" else KronALayer)(base, shape, rank, alpha=3.0)
    with torch.no_grad():
        for factor in layer.factors().values():
            factor.normal_()
    return layer, torch.randn(*lead, shape.d_in, dtype=torch.float64)


def dense_forward(layer, x: torch.Tensor) -> torch.Tensor:
    base = layer.base_layer
    weight = base.weight.T if isinstance(base, Conv1D) else base.weight
    out = x @ (weight + layer.delta_weight()).T
    return out if base.bias is None else out + base.bias


@pytest.mark.parametrize("method,conv1d", [("kron-lora", False), ("krona", False), ("lora", False),
                                           ("kron-lora", True), ("krona", True), ("lora", True)])  # fmt: skip
def test_structured_forward_and_gradients_equal_dense(method, conv1d):
    @SMALL
    @given(layer_case(method, conv1d))
    def check(case):
        layer, x = case
        structured = layer(x)
        assert structured.shape == (*x.shape[:-1], layer.d_out)
        dense = dense_forward(layer, x)
        torch.testing.assert_close(structured, dense, rtol=1e-10, atol=1e-10)
        upstream = torch.randn_like(dense)
        params = list(layer.factors().values())
        grads_structured = torch.autograd.grad((structured * upstream).sum(), params)
        grads_dense = torch.autograd.grad((dense_forward(layer, x) * upstream).sum(), params)
        for g_s, g_d in zip(grads_structured, grads_dense):
            torch.testing.assert_close(g_s, g_d, rtol=1e-9, atol=1e-9)

    check()


@pytest.mark.parametrize("method", ["kron-lora", "krona", "lora"])
@pytest.mark.parametrize("init", ["b-zero", "a-zero"])
def test_delta_is_zero_at_init_and_exactly_one_factor_is_zero(method, init):
    model = inject(tiny_bert(), AdapterConfig(method=method, rank=4, init=init, init_seed=3))
    for layer in adapter_layers(model).values():
        assert torch.count_nonzero(layer.delta_weight()) == 0
        zero = [attr for attr, p in layer.factors().items() if torch.count_nonzero(p) == 0]
        assert zero == [layer.zero_factor[init]]
    twin = inject(tiny_bert(), AdapterConfig(method=method, rank=4, init=init, init_seed=3))
    for (name, a), (_, b) in zip(adapter_state_dict(model).items(), adapter_state_dict(twin).items()):
        assert torch.equal(a, b), name


def test_b_zero_start_trains_only_b1_on_the_first_step():
    """With B1 = 0, ΔW is linear in B1 and dL/dA = dL/dB2 = 0 at step 0; the base gets no grads."""
    model = inject(tiny_bert(), AdapterConfig(init_seed=0)).train()
    out = model(input_ids=torch.arange(14).reshape(2, 7), labels=torch.tensor([0, 1]))
    out.loss.backward()
    layer = next(iter(adapter_layers(model).values()))
    assert torch.count_nonzero(layer.kron_B1.grad) > 0
    assert torch.count_nonzero(layer.kron_A.grad) == 0 and torch.count_nonzero(layer.kron_B2.grad) == 0
    assert all(p.grad is None for n, p in model.named_parameters() if n.endswith("base_layer.weight"))


def test_all_linear_targets_blocks_not_heads_and_auto_saves_the_head():
    model = inject(tiny_bert(), AdapterConfig())
    state = injected(model)
    assert len(state.targets) == 2 * 6 and all(n.startswith("bert.encoder.layer.") for n in state.targets)
    assert state.modules_to_save == ["classifier"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(adapter_state_dict(model))
    assert set(adapter_factor_roles(model).values()) == {"A", "B1", "B2", "full"}


def test_gpt2_conv1d_is_adapted_and_lm_head_is_not():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16)).eval()
    before = logits(model)
    inject(model, AdapterConfig(method="krona", rank=2))
    assert all(isinstance(layer.base_layer, Conv1D) for layer in adapter_layers(model).values())
    assert len(adapter_layers(model)) == 2 * 4 and injected(model).modules_to_save == []
    torch.testing.assert_close(logits(model), before)
    randomize(model)
    changed = logits(model)
    merge(model)
    torch.testing.assert_close(logits(model), changed, rtol=1e-5, atol=1e-5)


def test_merge_unmerge_round_trip():
    model = inject(tiny_bert(), AdapterConfig(method="kron-lora", rank=4))
    randomize(model)
    weights = {n: p.clone() for n, p in model.named_parameters() if n.endswith("base_layer.weight")}
    adapted = logits(model)
    merge(model)
    torch.testing.assert_close(logits(model), adapted, rtol=1e-5, atol=1e-5)
    assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
    with pytest.raises(AdapterStateError, match="already merged"):
        merge(model)
    with pytest.raises(AdapterStateError, match="merged"):
        load_adapter_state_dict(model, adapter_state_dict(model))
    unmerge(model)
    for name, param in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(param, weights[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model), adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["kron-lora", "krona", "lora"])
def test_save_load_round_trip_into_a_fresh_model(tmp_path, method):
    config = AdapterConfig(method=method, rank=4, alpha=8.0, shape_policy="peft")
    model = inject(tiny_bert(), config)
    randomize(model)
    save_adapter(model, tmp_path / "adapter")
    fresh = load_adapter(tiny_bert(), tmp_path / "adapter")
    assert injected(fresh).config == config
    torch.testing.assert_close(logits(fresh), logits(model))
    for (n1, t1), (n2, t2) in zip(adapter_state_dict(model).items(), adapter_state_dict(fresh).items()):
        assert n1 == n2 and torch.equal(t1, t2)
    other = inject(tiny_bert(), AdapterConfig(method=method, rank=2))
    with pytest.raises(AdapterStateError, match="different config"):
        load_adapter(other, tmp_path / "adapter")


def test_state_dict_is_strict_and_names_the_tensor():
    model = inject(tiny_bert(), AdapterConfig(rank=4))
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    name = next(iter(state))
    with pytest.raises(AdapterStateError, match=r"missing 1: .*kron_A \("):
        load_adapter_state_dict(model, {k: v for k, v in state.items() if k != name})
    with pytest.raises(AdapterStateError, match="unexpected 1: bogus.weight"):
        load_adapter_state_dict(model, {**state, "bogus.weight": torch.zeros(3)})
    with pytest.raises(AdapterStateError, match=r"has shape \(5, 5\), the model expects"):
        load_adapter_state_dict(model, {**state, name: torch.zeros(5, 5)})
    state[name] += 1.0
    load_adapter_state_dict(model, state)
    assert torch.equal(adapter_state_dict(model)[name], state[name])


def test_bad_input_raises_clear_errors():
    with pytest.raises(AdapterConfigError, match="unknown adapter method"):
        AdapterConfig(method="dora")
    with pytest.raises(AdapterConfigError, match="rank must be a positive int"):
        AdapterConfig(rank=0)
    with pytest.raises(TargetError, match="'no_such_layer' matches no module"):
        inject(tiny_bert(), AdapterConfig(target_modules=["query", "no_such_layer"]))
    with pytest.raises(TargetError, match="only nn.Linear and transformers Conv1D"):
        inject(tiny_bert(), AdapterConfig(target_modules=["LayerNorm"]))
    with pytest.raises(TargetError, match="factor_shapes key 'value'"):
        inject(tiny_bert(), AdapterConfig(target_modules=["query"], factor_shapes={"value": (2, 2)}))
    model = inject(tiny_bert(), AdapterConfig(target_modules=r".*\.query"))
    assert len(adapter_layers(model)) == 2
    with pytest.raises(AdapterStateError, match="already has adapters"):
        inject(model, AdapterConfig())
    odd = nn.Sequential(nn.ModuleList([nn.Linear(7, 6)]))
    with pytest.raises(FactorShapeError, match=r"'0.0' \(d_out=6, d_in=7\).*paper_a_in=2"):
        inject(odd, AdapterConfig(modules_to_save=None))
    assert not adapter_layers(odd)  # failed inject leaves the model untouched
    inject(odd, AdapterConfig(modules_to_save=None, factor_shapes={"0.0": (3, 7)}))
    assert adapter_layers(odd)["0.0"].shape == KronShape(3, 7, 2, 1)


def test_config_json_round_trip():
    config = AdapterConfig(method="krona", target_modules=["q", "v"], factor_shapes={"q": (2, 3)}, init="a-zero")
    assert AdapterConfig.from_dict(config.to_dict()) == config
    with pytest.raises(AdapterConfigError, match="unknown AdapterConfig keys"):
        AdapterConfig.from_dict({**config.to_dict(), "ranq": 3})


def distilbert_mc() -> nn.Module:
    with torch.device("meta"):
        return DistilBertForMultipleChoice(DistilBertConfig())


def mistral_7b() -> nn.Module:
    with torch.device("meta"):
        return MistralForCausalLM(MistralConfig())


MISTRAL_NORMS = ["input_layernorm", "post_attention_layernorm", "norm"]


@pytest.mark.parametrize(
    "build,config,expected",
    [
        (distilbert_mc, AdapterConfig(), 831_301),  # paper: 0.84M
        (distilbert_mc, AdapterConfig(method="lora", rank=16), 1_918_465),  # paper: 1.92M
        (mistral_7b, AdapterConfig(), 5_450_240),
        (mistral_7b, AdapterConfig(modules_to_save=MISTRAL_NORMS), 5_716_480),  # paper: 5.71M
        (mistral_7b, AdapterConfig(method="lora", rank=8), 20_971_520),
        (mistral_7b, AdapterConfig(method="lora", rank=8, modules_to_save=MISTRAL_NORMS), 21_237_760),
    ],
)
def test_parameter_counts_match_the_paper(build, config, expected):
    model = inject(build(), config)
    assert trainable_parameter_count(model) == expected
    if build is distilbert_mc:
        assert injected(model).modules_to_save == ["pre_classifier", "classifier"]
        assert len(injected(model).targets) == 6 * 6
    else:
        assert len(injected(model).targets) == 32 * 7


def test_dropout_touches_only_the_adapter_input():
    model = inject(tiny_bert(), AdapterConfig(method="lora", rank=4, dropout=0.5))
    randomize(model)
    layer = next(iter(adapter_layers(model).values()))
    x = torch.randn(5, layer.d_in)
    layer.eval()
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ layer.delta_weight().T)
    layer.train()
    torch.manual_seed(0)
    first, second = layer(x), layer(x)
    assert not torch.allclose(first, second)
    with torch.no_grad():
        layer.lora_B.zero_()  # ΔW = 0: dropout must leave the base output alone
    torch.testing.assert_close(layer(x), layer.base_layer(x))


def test_bitsandbytes_4bit_base_is_wrapped_but_never_merged():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    dense = nn.Linear(64, 32)
    quantized = bnb.nn.Linear4bit(64, 32, compute_dtype=torch.float32, quant_type="nf4")
    quantized.load_state_dict(dense.state_dict())
    model = nn.Sequential(nn.ModuleList([quantized.to("cpu")]))
    inject(model, AdapterConfig(rank=2, modules_to_save=None))
    layer = adapter_layers(model)["0.0"]
    assert layer.kron_A.dtype == torch.float32 and layer.base_layer.weight.dtype == torch.uint8
    randomize(model)
    x = torch.randn(3, 64)
    torch.testing.assert_close(model[0][0](x), layer.base_layer(x) + x @ layer.delta_weight().T)
    with pytest.raises(TypeError, match="cannot merge into a Linear4bit"):
        merge(model)
