"""Row normalisers: one function per task turns a raw row into the task's normalised columns.

Each accepts both the local-folder schema (files of ``../shared/data``) and the hub schema of the
task's `hub_id`, so local, packaged and hub loading share one code path per task and cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import datasets

from fedkron.data.tasks import TaskSpec


class DataFormatError(ValueError):
    """A row that does not have the columns or labels its task expects."""


def column(dataset: datasets.Dataset, name: str) -> list:
    """One column as a Python list, read through Arrow in one go (``dataset[name]`` in datasets>=4 is a
    lazy Column whose iteration costs ~25 us per row: 1.7 s on SST-2)."""
    if name not in dataset.column_names:
        raise DataFormatError(f"fedkron.data: dataset has no column {name!r} ({dataset.column_names})")
    return dataset.with_format("arrow").select_columns([name])[:][name].to_pylist()


def parse_label(value: object, spec: TaskSpec) -> int:
    """Label as an int id: accepts ints, bools, digit strings and the task's label names."""
    if isinstance(value, bool):
        out = int(value)
    elif isinstance(value, int):
        out = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        out = int(value.strip())
    elif isinstance(value, str) and value.strip() in spec.label_names:
        out = spec.label_names.index(value.strip())
    else:
        raise DataFormatError(f"fedkron.data: task {spec.name!r}: cannot read label {value!r}")
    if not 0 <= out < spec.num_labels:
        raise DataFormatError(f"fedkron.data: task {spec.name!r}: label {out} outside range({spec.num_labels})")
    return out


def _get(row: dict, spec: TaskSpec, *keys: str):
    """First present key of `keys` (local and hub spell some columns differently)."""
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    raise DataFormatError(f"fedkron.data: task {spec.name!r}: row has none of the columns {keys}; it has {sorted(row)}")


def _boolq(row: dict, spec: TaskSpec) -> dict:
    label = parse_label(_get(row, spec, "label", "answer"), spec)
    return {"text": row["question"], "text_pair": row["passage"], "label": label}


def _sentence(row: dict, spec: TaskSpec) -> dict:
    out = {"text": _get(row, spec, "sentence"), "label": parse_label(_get(row, spec, "label"), spec)}
    if spec.natural_id:
        out[spec.natural_id] = row[spec.natural_id]
    return out


def _sentence_pair(row: dict, spec: TaskSpec) -> dict:
    return {
        "text": _get(row, spec, "sentence1", "#1 String"),
        "text_pair": _get(row, spec, "sentence2", "#2 String"),
        "label": parse_label(_get(row, spec, "label", "Quality"), spec),
    }


def _piqa(row: dict, spec: TaskSpec) -> dict:
    return {"context": row["goal"], "choices": [row["sol1"], row["sol2"]], "label": parse_label(row["label"], spec)}


def _winogrande(row: dict, spec: TaskSpec) -> dict:
    sentence = row["sentence"]
    if "_" not in sentence:
        raise DataFormatError(f"fedkron.data: task 'winogrande': sentence without a '_' blank: {sentence[:80]!r}")
    cut = sentence.index("_")
    rest = sentence[cut + 1 :]
    return {
        "context": sentence[:cut].strip(),
        "choices": [row["option1"] + rest, row["option2"] + rest],
        "label": parse_label(int(_get(row, spec, "answer", "label")) - 1, spec),
    }


_ARC_KEYS = "ABCDE"


def _arc(row: dict, spec: TaskSpec) -> dict:
    texts, keys = list(row["choices"]["text"]), list(row["choices"]["label"])
    answer = str(row["answerKey"]).strip()
    if answer not in keys:
        raise DataFormatError(f"fedkron.data: task {spec.name!r}: answerKey {answer!r} not among {keys}")
    if len(texts) != spec.num_labels:
        raise DataFormatError(f"fedkron.data: task {spec.name!r}: {len(texts)} options, expected {spec.num_labels}")
    return {"context": row["question"], "choices": texts, "label": keys.index(answer)}


def _has_all_choices(row: dict, spec: TaskSpec) -> bool:
    return len(row["choices"]["text"]) == spec.num_labels


def _clean_hellaswag(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: drop WikiHow header tags and double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict, spec: TaskSpec) -> dict:
    ctx = row["ctx"]
    if row.get("activity_label"):  # hub schema: the local file already carries "Activity: " in ctx
        ctx = f"{row['activity_label']}: {ctx}"
    endings = [_clean_hellaswag(e) for e in row["endings"]]
    if len(endings) != spec.num_labels:
        raise DataFormatError(f"fedkron.data: task 'hellaswag': {len(endings)} endings, expected {spec.num_labels}")
    return {"context": _clean_hellaswag(ctx), "choices": endings, "label": parse_label(row["label"], spec)}


NORMALISERS: dict[str, Callable[[dict, TaskSpec], dict]] = {
    "boolq": _boolq,
    "sst2": _sentence,
    "sentiment": _sentence,
    "rte": _sentence_pair,
    "mrpc": _sentence_pair,
    "piqa": _piqa,
    "winogrande": _winogrande,
    "arc-easy": _arc,
    "arc-challenge": _arc,
    "hellaswag": _hellaswag,
}


# Rows a task leaves out before normalising (ARC: questions without exactly 4 options).
FILTERS: dict[str, Callable[[dict, TaskSpec], bool]] = {"arc-easy": _has_all_choices, "arc-challenge": _has_all_choices}


def normalise(row: dict, spec: TaskSpec) -> dict:
    """The normalised row of `spec`'s task (columns in `spec.columns`)."""
    return NORMALISERS[spec.name](row, spec)


def keep(row: dict, spec: TaskSpec) -> bool:
    """Whether `spec`'s task keeps this raw row (see FILTERS)."""
    check = FILTERS.get(spec.name)
    return True if check is None else check(row, spec)
