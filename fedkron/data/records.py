"""Row normalisers: one function per task turns a raw row into the task's normalised columns.

Each accepts both the local-folder schema (files of ``../shared/data``) and the hub schema of the
task's `hub_id`, so local, packaged and hub loading share one code path per task and cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import datasets

from fedkron.data.lm_prompts import PromptError, llm_adapters_to_mc
from fedkron.data.tasks import TaskSpec


class DataFormatError(ValueError):
    """A data file or row that does not have the shape its task expects (the message names the file,
    the line and what was expected)."""


class DataNotFoundError(FileNotFoundError):
    """An expected data file, folder or package is missing (the message names the path)."""


class RowError(DataFormatError):
    """One row is wrong; the loaders prefix the file and line (`detail` is the message without them).

    `missing`: the columns the row lacks, so that a TSV/CSV loader can blame its header line instead.
    """

    def __init__(self, spec: TaskSpec, detail: str, missing: tuple[str, ...] = ()):
        super().__init__(f"fedkron.data: task {spec.name!r}: {detail}")
        self.detail = detail
        self.missing = missing


def column(dataset: datasets.Dataset, name: str) -> list:
    """One column as a Python list, read through Arrow in one go (``dataset[name]`` in datasets>=4 is a
    lazy Column whose iteration costs ~25 us per row: 1.7 s on SST-2)."""
    if name not in dataset.column_names:
        raise DataFormatError(f"fedkron.data: dataset has no column {name!r} ({dataset.column_names})")
    return dataset.with_format("arrow").select_columns([name])[:][name].to_pylist()


# At most 40 ASCII digits: a longer string is a code, not a class id (and int() refuses > 4300 digits);
# str.isdigit() would also pass "--5" and "²", which int() refuses with a traceback.
_INT_TEXT = re.compile(r"-?[0-9]{1,40}")


def label_key(value: object) -> int | str | None:
    """A raw label as an int (ints, bools, integral floats, digit strings) or a stripped string; None if empty."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text):
            return int(text)
        return text or None
    return None


def _expected_labels(spec: TaskSpec) -> str:
    """The valid labels as a message shows them: every id for a few classes, the range for many."""
    ids = ", ".join(map(str, range(spec.num_labels))) if spec.num_labels <= 10 else f"0..{spec.num_labels - 1}"
    names = ", ".join(spec.label_names)
    return f"{ids} (or {names})" if spec.label_names and not _label_map(spec) else ids


def _label_map(spec: TaskSpec) -> tuple[str, ...]:
    return spec.custom.label_map if spec.custom is not None else ()


def parse_label(value: object, spec: TaskSpec) -> int:
    """Label as an int id: ints, bools, digit strings and the task's label names (custom string labels: their map)."""
    names = _label_map(spec)
    if names:
        text = str(value).strip()
        if text not in names:
            raise RowError(spec, f"label {value!r} is not one of the labels {', '.join(map(repr, names))}")
        return names.index(text)
    key = label_key(value)
    if isinstance(key, str) and key in spec.label_names:
        key = spec.label_names.index(key)
    if not isinstance(key, int) or not 0 <= key < spec.num_labels:
        raise RowError(spec, f"label {value!r} is not one of {_expected_labels(spec)}")
    return key


def _get(row: dict, spec: TaskSpec, *keys: str):
    """First present key of `keys` (local and hub spell some columns differently)."""
    for key in keys:
        if key in row and row[key] is not None:
            return row[key]
    wanted = " or ".join(map(repr, keys))
    raise RowError(spec, f"no column {wanted}; the row has {sorted(map(str, row))}", missing=keys)


def _text(row: dict, spec: TaskSpec, *keys: str) -> str:
    """A text column, which must hold a string."""
    value = _get(row, spec, *keys)
    if not isinstance(value, str):
        raise RowError(spec, f"column {keys[0]!r} holds {value!r} ({type(value).__name__}); expected a string")
    return value


def _boolq(row: dict, spec: TaskSpec) -> dict:
    label = parse_label(_get(row, spec, "label", "answer"), spec)
    return {"text": _text(row, spec, "question"), "text_pair": _text(row, spec, "passage"), "label": label}


def _sentence(row: dict, spec: TaskSpec) -> dict:
    out = {"text": _text(row, spec, "sentence"), "label": parse_label(_get(row, spec, "label"), spec)}
    if spec.natural_id:
        out[spec.natural_id] = row[spec.natural_id]
    return out


def _sentence_pair(row: dict, spec: TaskSpec) -> dict:
    return {
        "text": _text(row, spec, "sentence1", "#1 String"),
        "text_pair": _text(row, spec, "sentence2", "#2 String"),
        "label": parse_label(_get(row, spec, "label", "Quality"), spec),
    }


def _piqa(row: dict, spec: TaskSpec) -> dict:
    return {
        "context": _text(row, spec, "goal"),
        "choices": [_text(row, spec, "sol1"), _text(row, spec, "sol2")],
        "label": parse_label(_get(row, spec, "label"), spec),
    }


def _winogrande(row: dict, spec: TaskSpec) -> dict:
    sentence = _text(row, spec, "sentence")
    if "_" not in sentence:
        raise RowError(spec, f"sentence without a '_' blank: {sentence[:80]!r}")
    answer = _get(row, spec, "answer", "label")
    if label_key(answer) not in (1, 2):
        raise RowError(spec, f"answer {answer!r} is not one of 1, 2")
    cut = sentence.index("_")
    rest = sentence[cut + 1 :]
    return {
        "context": sentence[:cut].strip(),
        "choices": [_text(row, spec, "option1") + rest, _text(row, spec, "option2") + rest],
        "label": label_key(answer) - 1,
    }


def _custom(row: dict, spec: TaskSpec) -> dict:
    """A `custom_task` row: the user's column names."""
    data = spec.custom
    out = {"text": _text(row, spec, data.text_column)}
    if data.text_pair_column:
        out["text_pair"] = _text(row, spec, data.text_pair_column)
    out["label"] = parse_label(_get(row, spec, data.label_column), spec)
    return out


_ARC_KEYS = "ABCDE"


def _arc(row: dict, spec: TaskSpec) -> dict:
    texts, keys = list(row["choices"]["text"]), list(row["choices"]["label"])
    answer = str(_get(row, spec, "answerKey")).strip()
    if answer not in keys:
        raise RowError(spec, f"answerKey {answer!r} is not one of the option keys {', '.join(keys)}")
    if len(texts) != spec.num_labels:
        raise RowError(spec, f"{len(texts)} options, expected {spec.num_labels}")
    return {"context": _text(row, spec, "question"), "choices": texts, "label": keys.index(answer)}


def _openbookqa(row: dict, spec: TaskSpec) -> dict:
    """The hub's rows (question_stem, choices, answerKey) or LLM-Adapters' instruction records."""
    if "instruction" in row:
        try:
            return llm_adapters_to_mc(row)
        except (PromptError, KeyError, ValueError) as err:
            raise RowError(spec, f"not an LLM-Adapters multiple-choice record: {err}") from None
    return _arc({**row, "question": _get(row, spec, "question_stem", "question")}, spec)


def _has_all_choices(row: dict, spec: TaskSpec) -> bool:
    return len(row["choices"]["text"]) == spec.num_labels


def _clean_hellaswag(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: drop WikiHow header tags and double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: dict, spec: TaskSpec) -> dict:
    ctx = _text(row, spec, "ctx")
    if row.get("activity_label"):  # hub schema: the local file already carries "Activity: " in ctx
        ctx = f"{row['activity_label']}: {ctx}"
    endings = [_clean_hellaswag(e) for e in _get(row, spec, "endings")]
    if len(endings) != spec.num_labels:
        raise RowError(spec, f"{len(endings)} endings, expected {spec.num_labels}")
    return {"context": _clean_hellaswag(ctx), "choices": endings, "label": parse_label(_get(row, spec, "label"), spec)}


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
    "openbookqa": _openbookqa,
}


# Rows a task leaves out before normalising (ARC: questions without exactly 4 options).
FILTERS: dict[str, Callable[[dict, TaskSpec], bool]] = {"arc-easy": _has_all_choices, "arc-challenge": _has_all_choices}


def normalise(row: dict, spec: TaskSpec) -> dict:
    """The normalised row of `spec`'s task (columns in `spec.columns`)."""
    return _custom(row, spec) if spec.custom is not None else NORMALISERS[spec.name](row, spec)


def keep(row: dict, spec: TaskSpec) -> bool:
    """Whether `spec`'s task keeps this raw row (see FILTERS)."""
    check = None if spec.custom is not None else FILTERS.get(spec.name)
    return True if check is None else check(row, spec)
