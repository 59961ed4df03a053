"""The SST-2 copy inside fedkron: offline default, equal to the GLUE files, installed, refused when damaged."""

from __future__ import annotations

import fnmatch
import lzma
from pathlib import Path

import datasets
import pytest
import tomllib

from fedkron.data import DATA_DIR_ENV, DataFormatError, build_packaged_sst2, bundle, load_splits, resolve_source

REPO = Path(__file__).resolve().parents[1]


def labels(split: datasets.Dataset) -> list[int]:
    return list(split[:]["label"])


@pytest.fixture()
def offline(monkeypatch):
    """No data folder and no hub: only the package itself can serve SST-2."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("must not reach the hub"))


def test_sst2_loads_from_the_package_alone(offline):
    assert resolve_source("sst2", None, "auto") == ("packaged", None)
    splits = load_splits("sst2")
    assert (len(splits["train"]), len(splits["test"])) == (67349, 872)
    assert set(labels(splits["train"])) == {0, 1} == set(labels(splits["test"]))
    assert sum(labels(splits["train"])) == 37569 and sum(labels(splits["test"])) == 444  # GLUE: positives
    assert splits["train"][0] == {"text": "hide new secretions from the parental units ", "label": 0}


def test_packaged_equals_the_local_glue_files_row_for_row(shared_data, offline):
    packaged, local = load_splits("sst2"), load_splits("sst2", data_dir=shared_data)
    for split in ("train", "test"):
        assert packaged[split][:] == local[split][:]  # same texts, order and labels


def test_explicit_folder_comes_before_the_package(monkeypatch, tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\nmine \t1\nalso mine \t0\n")
    (tmp_path / "sst2" / "dev.tsv").write_text("sentence\tlabel\nheld out \t1\n")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_source("sst2", None, "auto") == ("local", str(tmp_path.resolve()))
    assert load_splits("sst2")["train"][:]["text"] == ["mine ", "also mine "]
    monkeypatch.delenv(DATA_DIR_ENV)
    assert len(load_splits("sst2", data_dir=tmp_path)["test"]) == 1


def test_damaged_copy_is_refused(monkeypatch, tmp_path):
    (tmp_path / "train.tsv.xz").write_bytes(lzma.compress(b"sentence\tlabel\ntampered\t1\n"))
    monkeypatch.setattr(bundle, "SST2_DIR", tmp_path)
    with pytest.raises(DataFormatError, match=r"train.tsv.xz decompresses to sha256 [0-9a-f]{64}, expected 48eac263"):
        load_splits("sst2", source="packaged")


def test_builder_checks_the_originals(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\nnot glue\t1\n")
    with pytest.raises(DataFormatError, match=r"train.tsv has sha256 .*expected 48eac263.*67349 rows"):
        build_packaged_sst2(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_rebuild_reproduces_the_packaged_files(shared_data, tmp_path):
    sizes = build_packaged_sst2(shared_data / "sst2", tmp_path)
    for name, size in sizes.items():
        assert (tmp_path / f"{name}.xz").read_bytes() == (bundle.SST2_DIR / f"{name}.xz").read_bytes()
        assert size == (bundle.SST2_DIR / f"{name}.xz").stat().st_size


def test_package_data_ships_the_files_and_stays_small():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["fedkron.data"]
    root = REPO / "fedkron" / "data"
    shipped = {p.relative_to(root).as_posix() for p in (root / "packaged").rglob("*") if p.is_file()}
    assert {"packaged/README.md", "packaged/sst2/train.tsv.xz", "packaged/sst2/dev.tsv.xz"} <= shipped
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in shipped)  # every file is installed
    assert sum((root / f).stat().st_size for f in shipped) < 600_000
