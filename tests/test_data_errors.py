"""Bad data files end in one line naming the file, the line and what was expected (not a traceback).

Each case writes tiny files in the layout of ../shared/data into tmp_path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedkron.data import (
    DataFormatError,
    DataNotFoundError,
    PartitionError,
    check_task_data,
    clear_cache,
    get_client_data,
    get_splits,
    load_splits,
)

DEV = "sentence\tlabel\nfine . \t1\n"


def put(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (root / name).write_bytes(text)
        else:
            (root / name).write_text(text, encoding="utf-8")
    return root


def jsonl(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def expect(err: type[Exception], message: str, task: str, root: Path, **kwargs) -> str:
    with pytest.raises(err) as info:
        load_splits(task, data_dir=root, **kwargs)
    text = str(info.value)
    assert text == message.format(root=root), text
    assert "\n" not in text
    return text


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_wrong_header(tmp_path):
    put(tmp_path, {"sst2/train.tsv": "text\tlabel\ngood \t1\n", "sst2/dev.tsv": DEV})
    expect(
        DataFormatError,
        "fedkron.data: {root}/sst2/train.tsv line 1: the header has columns "
        "['text', 'label']; expected a column 'sentence'",
        "sst2",
        tmp_path,
    )


def test_empty_train_file(tmp_path):
    put(tmp_path, {"sst2/train.tsv": "", "sst2/dev.tsv": DEV})
    expect(
        DataFormatError,
        "fedkron.data: {root}/sst2/train.tsv is empty; expected a header line of tab-separated column names, then rows",
        "sst2",
        tmp_path,
    )
    put(tmp_path, {"sst2/train.tsv": "sentence\tlabel\n"})
    expect(
        DataFormatError,
        "fedkron.data: {root}/sst2/train.tsv has a header line but no rows; expected at least one row after it",
        "sst2",
        tmp_path,
    )
    put(
        tmp_path,
        {"boolq/train.jsonl": "\n", "boolq/validation.jsonl": jsonl({"question": "q", "passage": "p", "answer": True})},
    )
    expect(
        DataFormatError,
        "fedkron.data: {root}/boolq/train.jsonl has no rows; expected at least one JSON object (one per line)",
        "boolq",
        tmp_path,
    )


def test_broken_jsonl_line(tmp_path):
    good = {"question": "is it", "passage": "It is.", "label": True}
    put(
        tmp_path,
        {
            "boolq/train.jsonl": jsonl(good) + '{"question": "is it", "passage": \n' + jsonl(good),
            "boolq/validation.jsonl": jsonl(good),
        },
    )
    expect(
        DataFormatError,
        "fedkron.data: {root}/boolq/train.jsonl line 2: not valid JSON (Expecting value at "
        "column 34); expected one JSON object per line",
        "boolq",
        tmp_path,
    )
    put(tmp_path, {"boolq/train.jsonl": jsonl(good, ["a", "list"])})
    expect(
        DataFormatError,
        "fedkron.data: {root}/boolq/train.jsonl line 2: a JSON list; expected a JSON object",
        "boolq",
        tmp_path,
    )


def test_broken_json_array(tmp_path):
    put(tmp_path, {"arc_easy/train.json": '[\n  {"id": "e1",}\n]', "arc_easy/validation.json": "[]"})
    expect(
        DataFormatError,
        "fedkron.data: {root}/arc_easy/train.json line 2: not valid JSON (Expecting property "
        "name enclosed in double quotes at column 15); expected a JSON array of objects",
        "arc-easy",
        tmp_path,
    )


def test_out_of_range_label(tmp_path):
    rows = "".join(f"review {i} \t{i % 2}\n" for i in range(5))
    put(tmp_path, {"sst2/train.tsv": f"sentence\tlabel\n{rows}odd one \tx\n", "sst2/dev.tsv": DEV})
    expect(
        DataFormatError,
        "fedkron.data: {root}/sst2/train.tsv line 7: label 'x' is not one of 0, 1 (or negative, positive)",
        "sst2",
        tmp_path,
    )
    put(tmp_path, {"sst2/dev.tsv": "sentence\tlabel\nfine \t1\nthree classes? \t2\n"})
    put(tmp_path, {"sst2/train.tsv": f"sentence\tlabel\n{rows}"})
    expect(
        DataFormatError,
        "fedkron.data: {root}/sst2/dev.tsv line 3: label '2' is not one of 0, 1 (or negative, positive)",
        "sst2",
        tmp_path,
    )
    wino = {"sentence": "A hit B so _ cried.", "option1": "A", "option2": "B"}
    put(
        tmp_path,
        {
            "winogrande/train_l.jsonl": jsonl({**wino, "answer": "1"}, {**wino, "answer": "3"}),
            "winogrande/dev.jsonl": jsonl({**wino, "answer": "2"}),
        },
    )
    expect(
        DataFormatError,
        "fedkron.data: {root}/winogrande/train_l.jsonl line 2: answer '3' is not one of 1, 2",
        "winogrande",
        tmp_path,
    )


def test_missing_dev_file_and_missing_folder(tmp_path):
    put(tmp_path, {"sst2/train.tsv": "sentence\tlabel\ngood \t1\n"})
    expect(
        DataNotFoundError,
        "fedkron.data: task 'sst2' expects the file {root}/sst2/dev.tsv (test split; layout "
        "of ../shared/data, see its README); it does not exist",
        "sst2",
        tmp_path,
    )
    expect(
        DataNotFoundError,
        "fedkron.data: data_dir {root} is not a folder; task 'sst2' expects sst2/train.tsv in it",
        "sst2",
        tmp_path / "nowhere",
    )


def test_fewer_rows_than_clients(tmp_path):
    rows = "".join(f"review {i} \t{i % 2}\n" for i in range(12))
    put(tmp_path, {"sst2/train.tsv": f"sentence\tlabel\n{rows}", "sst2/dev.tsv": DEV})
    message = "fedkron.data: task sst2 has 12 training rows, fewer than the 20 clients asked for"
    for scheme in ("iid", "dirichlet"):
        with pytest.raises(PartitionError) as info:
            check_task_data("sst2", tmp_path, 20, scheme, 0)
        assert str(info.value) == message
    tokenizer = type("Tok", (), {"name_or_path": "any"})()  # never reached: the partition fails first
    with pytest.raises(PartitionError, match=re.escape(message)):
        get_client_data("sst2", 0, 20, tokenizer, 32, data_dir=tmp_path)


def test_rows_with_the_wrong_number_of_fields_and_non_utf8(tmp_path):
    put(tmp_path, {"sst2/train.tsv": "sentence\tlabel\ngood \t1\na\ttab inside\t0\n", "sst2/dev.tsv": DEV})
    expect(
        DataFormatError,
        "fedkron.data: {root}/sst2/train.tsv line 3: 3 tab-separated fields, expected 2 as in "
        "the header (sentence, label)",
        "sst2",
        tmp_path,
    )
    put(tmp_path, {"sst2/train.tsv": b"sentence\tlabel\ngood \t1\ncaf\xe9 \t1\n"})
    expect(
        DataFormatError,
        "fedkron.data: {root}/sst2/train.tsv line 3: byte b'\\xe9' is not UTF-8; expected UTF-8 text",
        "sst2",
        tmp_path,
    )


def test_line_numbers_count_quoted_multi_line_rows(tmp_path):
    review = 'sentence\tlabel\n"Long review,\nspread over\nthree lines"\t1\nshort\tmaybe\n'
    files = {
        f"blitzer_sentiment/{d}/{s}.tsv": review if d == "dvd" and s == "train" else "sentence\tlabel\nok\t1\n"
        for d in ("airline", "books", "dvd", "electronics", "kitchen")
        for s in ("train", "dev")
    }
    put(tmp_path, files)
    expect(
        DataFormatError,
        "fedkron.data: {root}/blitzer_sentiment/dvd/train.tsv line 5: label 'maybe' is not one "
        "of 0, 1 (or negative, positive)",
        "sentiment",
        tmp_path,
    )


def test_side_label_file_must_match_rows(tmp_path):
    put(
        tmp_path,
        {
            "piqa/valid.jsonl": jsonl(*({"goal": f"g{i}", "sol1": "a", "sol2": "b"} for i in range(3))),
            "piqa/valid-labels.lst": "0\n1\n",
        },
    )
    expect(
        DataFormatError,
        "fedkron.data: {root}/piqa/valid-labels.lst has 2 labels for the 3 rows of "
        "{root}/piqa/valid.jsonl; expected one label per row",
        "piqa",
        tmp_path,
    )


def test_check_task_data_reports_the_split_and_fills_the_cache(tmp_path):
    rows = "".join(f"review {i} \t{i % 2}\n" for i in range(40))
    put(tmp_path, {"sst2/train.tsv": f"sentence\tlabel\n{rows}", "sst2/dev.tsv": DEV})
    check = check_task_data("sst2", tmp_path, 4, "dirichlet", 3, alpha=1.0)
    assert (check.task, check.source, check.train_rows, check.test_rows) == ("sst2", "local", 40, 1)
    assert len(check.partition_sizes) == 4 and sum(check.partition_sizes) == 40 and min(check.partition_sizes) >= 1
    (tmp_path / "sst2" / "train.tsv").unlink()  # a later load in this process must not touch the files again
    assert len(get_splits("sst2", data_dir=tmp_path, seed=3)["train"]) == 40
