"""`custom_task`: a task built at run time from your own files (CSV, TSV, JSON array, JSONL) or a hub
dataset id, for data that is not in the registry. The returned `TaskSpec` goes wherever a task name
does (`load_splits`, `partition`, `get_client_data`, `get_eval_data`, `check_task_data`).

Every process that needs the task (server, each client) calls `custom_task` with the same arguments;
the spec is deterministic, and it carries the file paths and their (size, mtime) so that two custom
tasks, or an edited file, never share a cache entry.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fedkron.data.files import FORMATS, FileInfo, Loc, format_of, read_rows, where
from fedkron.data.loaders import load_hub
from fedkron.data.records import DataFormatError, DataNotFoundError, column, label_key
from fedkron.data.tasks import CustomData, TaskSpec

HELD_OUT = 0.1  # share of train held out as the test split when no eval data is given
MAX_LABEL_ID = 9_999  # int labels are class ids 0..K-1 of a K-output head; a larger id is a code, not a class
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
log = logging.getLogger(__name__)


def _task_kind(kind: str | None, text_pair_column: str | None) -> str:
    """``single`` or ``pair``: given, or from whether a second text column is named."""
    if kind is None:
        kind = "pair" if text_pair_column else "single"
    if kind not in ("single", "pair"):
        raise ValueError(
            f"fedkron.data: custom_task kind {kind!r}; expected 'single' or 'pair' (multiple choice is not supported)"
        )
    if (kind == "pair") != bool(text_pair_column):
        need = "needs" if kind == "pair" else "takes no"
        raise ValueError(f"fedkron.data: custom_task kind {kind!r} {need} text_pair_column")
    return kind


def custom_task(
    train: str,
    eval: str | None = None,  # noqa: A002 - the name users see in the CLI / config
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    kind: str | None = None,
    name: str | None = None,
    hub_config: str | None = None,
) -> TaskSpec:
    """A classification task from `train` (+ optional `eval`) files, or from a hub dataset id.

    Files: ``.csv`` / ``.tsv`` (header line, standard quoting), ``.json`` (array of objects) or ``.jsonl``
    (one object per line); `eval` may use another of these formats. A hub id (``owner/name``, when
    `train` is no file): `eval` is then the hub split to test on (train is split ``train``).
    Without `eval`, a seeded 10% of train is held out (as `local_test_fraction` does).

    Labels are ints (0..K-1; digit strings in CSV count as ints; num_labels = max + 1) or strings
    (mapped to ids in sorted order: ``spec.label_names``). `kind` defaults to ``"pair"`` when
    `text_pair_column` is set, else ``"single"``.
    """
    kind = _task_kind(kind, text_pair_column)
    columns = (text_column, text_pair_column, label_column)
    hub = _is_hub(train)
    if hub:
        values, label_names = _hub_labels(train, eval, hub_config, columns)
        paths, fingerprint = (train, eval), ()
    else:
        paths = tuple(str(_existing(p, what)) if p else None for p, what in ((train, "train"), (eval, "eval")))
        fingerprint = tuple(_fingerprint(Path(p)) for p in paths if p)
        values, label_names = _file_labels(paths, columns), None
    num_labels, label_map = infer_labels(values, label_column)
    if label_names:  # a hub ClassLabel: its names, and all its classes even if one never occurs
        num_labels = max(num_labels, len(label_names))
    data = CustomData(
        train=paths[0],
        eval=paths[1],
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        label_map=label_map,
        hub=hub,
        hub_config=hub_config,
        fingerprint=fingerprint,
    )
    return TaskSpec(
        name or f"custom:{Path(train).name if not hub else train}",
        kind,
        num_labels,
        hub_id=train if hub else None,
        hub_config=hub_config,
        hub_splits=("train", eval or "") if hub else ("train", "validation"),
        local_test_fraction=None if eval else HELD_OUT,
        label_names=label_map or tuple(label_names or ()),
        notes=f"Custom task: train={paths[0]}, eval={paths[1] or f'{HELD_OUT:.0%} of train held out'}.",
        custom=data,
    )


def infer_labels(values: list[tuple[object, Loc | None]], label_column: str = "label") -> tuple[int, tuple[str, ...]]:
    """(num_labels, label_map): ints 0..K-1 give (max + 1, ()); strings give (count, sorted strings).

    Only the labels seen are stored (memory bounded by the file, never by a label's value), and an
    int label above MAX_LABEL_ID is refused: it would give a head of that many outputs (a label of
    10^9 once meant a 24 GB set of unused ids and the OOM killer)."""
    ints: dict[int, Loc | None] = {}
    strings: dict[str, Loc | None] = {}
    for value, loc in values:
        key = label_key(value)
        at = f"{where(loc)}: " if loc else ""
        if key is None:
            raise DataFormatError(
                f"fedkron.data: {at}label column {label_column!r} holds {_short(value)}; expected an int or a string"
            )
        if isinstance(key, int) and key < 0:
            raise DataFormatError(
                f"fedkron.data: {at}label {_short(value)} is negative; expected ints 0, 1, ... or strings"
            )
        if isinstance(key, int) and key > MAX_LABEL_ID:
            raise DataFormatError(
                f"fedkron.data: {at}label {_short(value)} is above {MAX_LABEL_ID:,}; int labels are class ids "
                f"0..K-1 (at most {MAX_LABEL_ID + 1:,} classes): renumber them or use string labels"
            )
        (ints if isinstance(key, int) else strings).setdefault(key, loc)
    if ints and strings:
        (i, i_loc), (t, t_loc) = next(iter(ints.items())), next(iter(strings.items()))
        raise DataFormatError(
            f"fedkron.data: labels mix ints ({i!r} at {where(i_loc) if i_loc else '?'}) and strings ({_short(t)} at "
            f"{where(t_loc) if t_loc else '?'}); expected all ints or all strings in column {label_column!r}"
        )
    if len(ints) + len(strings) < 2:
        raise DataFormatError(
            f"fedkron.data: column {label_column!r} has {len(ints) + len(strings)} distinct label(s) "
            f"({_short(sorted(ints) or sorted(strings))}); expected at least 2 classes"
        )
    if strings:
        return len(strings), tuple(sorted(strings))
    num = max(ints) + 1
    if len(ints) < num:
        unused = [i for i in range(num) if i not in ints][:10]  # num <= MAX_LABEL_ID + 1: bounded
        log.warning(
            "fedkron.data: custom labels: %d id(s) never occur (%s%s; num_labels = max label + 1 = %d)",
            num - len(ints),
            ", ".join(map(str, unused)),
            ", ..." if num - len(ints) > len(unused) else "",
            num,
        )
    return num, ()


def _short(value: object, limit: int = 80) -> str:
    """A value as shown in a message: its repr, cut so that a 100 KiB cell stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...(cut)"


def _file_labels(paths: tuple[str | None, ...], columns: tuple[str | None, ...]) -> list[tuple[object, Loc]]:
    """Every row's label value and where it is, from the train (+ eval) files, their columns checked."""
    values: list[tuple[object, Loc]] = []
    for path in filter(None, paths):
        rows, locs = read_rows(Path(path))
        _check_columns(rows[0], locs[0], columns)
        values.extend((row.get(columns[-1]), loc) for row, loc in zip(rows, locs))
    return values


def _is_hub(train: str) -> bool:
    path = Path(train).expanduser()
    if path.exists() or path.suffix.lower() in FORMATS:
        return False
    return bool(_HUB_ID.match(train))


def _existing(path: str, what: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():
        raise DataNotFoundError(
            f"fedkron.data: custom task {what} file {resolved} is a folder; expected a {', '.join(FORMATS)} file"
        )
    if not resolved.is_file():
        raise DataNotFoundError(
            f"fedkron.data: custom task {what} file {resolved} does not exist "
            f"(expected a {', '.join(FORMATS)} file, or a hub dataset id for train)"
        )
    format_of(resolved)
    return resolved


def _fingerprint(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _check_columns(row: dict, loc: Loc, wanted: tuple[str | None, ...]) -> None:
    """The named columns exist (checked on the first row: CSV/TSV share one header; JSON rows each are
    checked again at load time)."""
    info = loc[0]
    for col in filter(None, wanted):
        if col not in row:
            at = f"{info.path} line 1: the header" if info.header is not None else f"{where(loc)}: the row"
            raise DataFormatError(
                f"fedkron.data: {at} has columns {sorted(map(str, row))}; expected a column {col!r} "
                "(set text_column / text_pair_column / label_column)"
            )


def _hub_labels(hub_id: str, eval_split: str | None, config: str | None, columns: tuple[str | None, ...]):
    """Label values (each with its split and row) of the hub dataset's train (+ eval) split, and its
    ClassLabel names if any."""
    hub = load_hub(hub_id, config)
    label_column = columns[-1]
    values: list[tuple[object, Loc]] = []
    for split in ["train"] + ([eval_split] if eval_split else []):
        if split not in hub:
            raise DataNotFoundError(f"fedkron.data: hub dataset {hub_id!r} has no split {split!r} ({list(hub)})")
        missing = [c for c in columns if c and c not in hub[split].column_names]
        if missing:
            raise DataFormatError(
                f"fedkron.data: hub dataset {hub_id!r} split {split!r} has columns {hub[split].column_names}; "
                f"expected {missing} (set text_column / text_pair_column / label_column)"
            )
        info = FileInfo(f"hub dataset {hub_id!r} split {split!r}", "row")
        values.extend((v, (info, n)) for n, v in enumerate(column(hub[split], label_column), 1))
    return values, getattr(hub["train"].features.get(label_column), "names", None)  # a ClassLabel's names
