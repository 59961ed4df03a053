"""Read data files into raw rows, remembering where each row came from.

A bad file must end in one line that names the file, the line and what was expected, not in a
traceback from inside csv, json or Arrow. So the readers return, next to the rows, one `Loc` per row
(file + 1-based line, the header of a TSV/CSV being line 1; the 1-based entry of a JSON array), and
the loaders turn a row's `RowError` into ``"<path> line <n>: <what was expected>"``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from fedkron.data.records import DataFormatError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}


@dataclass(frozen=True)
class FileInfo:
    """One file being read: its path as shown in messages, how rows are counted, its TSV/CSV header."""

    path: str
    unit: str = "line"  # "line" (TSV, CSV, JSONL), "entry" (JSON array) or "row" (a hub split)
    header: tuple[str, ...] | None = None


Loc = tuple[FileInfo, int]  # (file, 1-based line or entry)
Rows = tuple[list[dict], list[Loc]]  # raw rows and where each came from


def where(loc: Loc) -> str:
    info, n = loc
    return f"{info.path} {info.unit} {n}"


def format_of(path: str | Path) -> str:
    """``csv`` / ``tsv`` / ``json`` / ``jsonl`` from the file suffix."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataFormatError(
            f"fedkron.data: {path}: unknown file type {Path(path).suffix!r}; expected one of {', '.join(FORMATS)}"
        )
    return fmt


def read_text(path: Path) -> str:
    """The file as text (UTF-8, a leading BOM dropped); a decoding error names the line, a file that
    cannot be read (a folder, no permission) says so in one line instead of an OSError traceback."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataFormatError(f"fedkron.data: {path} cannot be read: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFormatError(
            f"fedkron.data: {path} line {line}: byte {data[err.start : err.start + 1]!r} is not UTF-8; "
            "expected UTF-8 text"
        ) from None


def parse_table(text: str, path: str, delimiter: str, quoting: int = csv.QUOTE_MINIMAL) -> Rows:
    """Rows of a CSV/TSV text with a header line; each row must have as many fields as the header."""
    kind = "tab" if delimiter == "\t" else "comma"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise DataFormatError(
                f"fedkron.data: {path} is empty; expected a header line of {kind}-separated column names, then rows"
            )
        info = FileInfo(path, "line", tuple(header))
        rows, locs, last = [], [], reader.line_num
        for fields in reader:
            start, last = last + 1, reader.line_num
            if not fields:  # a blank line
                continue
            if len(fields) != len(header):
                raise DataFormatError(
                    f"fedkron.data: {path} line {start}: {len(fields)} {kind}-separated fields, expected "
                    f"{len(header)} as in the header ({', '.join(header)})"
                )
            rows.append(dict(zip(header, fields)))
            locs.append((info, start))
    except csv.Error as err:
        raise DataFormatError(
            f"fedkron.data: {path} line {reader.line_num}: not valid {kind}-separated text ({err})"
        ) from None
    return rows, locs


def parse_jsonl(text: str, path: str) -> Rows:
    """One JSON object per line (blank lines skipped)."""
    info = FileInfo(path, "line")
    rows, locs = [], []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(
                f"fedkron.data: {path} line {n}: not valid JSON ({err.msg} at column {err.colno}); "
                "expected one JSON object per line"
            ) from None
        except (RecursionError, ValueError) as err:
            raise DataFormatError(
                f"fedkron.data: {path} line {n}: {_unreadable_json(err)}; expected one JSON object per line"
            ) from None
        if not isinstance(row, dict):
            raise DataFormatError(f"fedkron.data: {path} line {n}: a JSON {type(row).__name__}; expected a JSON object")
        rows.append(row)
        locs.append((info, n))
    return rows, locs


def parse_json(text: str, path: str) -> Rows:
    """A JSON array of objects."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            f"fedkron.data: {path} line {err.lineno}: not valid JSON ({err.msg} at column {err.colno}); "
            "expected a JSON array of objects"
        ) from None
    except (RecursionError, ValueError) as err:
        raise DataFormatError(
            f"fedkron.data: {path}: {_unreadable_json(err)}; expected a JSON array of objects"
        ) from None
    if not isinstance(data, list):
        raise DataFormatError(f"fedkron.data: {path}: a JSON {type(data).__name__}; expected a JSON array of objects")
    info = FileInfo(path, "entry")
    for n, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise DataFormatError(
                f"fedkron.data: {path} entry {n}: a JSON {type(row).__name__}; expected a JSON object"
            )
    return data, [(info, n) for n in range(1, len(data) + 1)]


def _unreadable_json(err: BaseException) -> str:
    """Valid JSON that Python still refuses: nesting deeper than its recursion limit, or an integer
    longer than its 4300-digit conversion limit (both would otherwise end in a traceback)."""
    if isinstance(err, RecursionError):
        return "JSON nested too deeply to read"
    return f"a JSON value Python cannot read ({str(err).splitlines()[0] if str(err) else type(err).__name__})"


def read_rows(path: Path, fmt: str | None = None, quoting: int = csv.QUOTE_MINIMAL) -> Rows:
    """Raw rows and their locations; a file without rows is an error (a split cannot be empty)."""
    fmt = fmt or format_of(path)
    text = read_text(path)
    if fmt in ("csv", "tsv"):
        rows, locs = parse_table(text, str(path), "," if fmt == "csv" else "\t", quoting)
        if not rows:
            raise DataFormatError(
                f"fedkron.data: {path} has a header line but no rows; expected at least one row after it"
            )
        return rows, locs
    rows, locs = (parse_json if fmt == "json" else parse_jsonl)(text, str(path))
    if not rows:
        shape = "a JSON array with at least one object" if fmt == "json" else "at least one JSON object (one per line)"
        raise DataFormatError(f"fedkron.data: {path} has no rows; expected {shape}")
    return rows, locs
