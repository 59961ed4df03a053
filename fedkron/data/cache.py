"""Process-level caches so that a Flower client process (or a Ray actor serving many clients) loads a
task once and tokenises each partition once, not every round.

Keys are plain values: (task spec, resolved source, data_dir, seed) for the splits; plus split, partition
scheme/parameters, partition id, tokenizer name and max_length for the tensors. ``source="auto"`` is
resolved before keying, so "auto" and the source it stands for share entries. The key holds the whole
frozen `TaskSpec`, so a `custom_task` is keyed by its file paths and their (size, mtime).

`check_task_data` runs the load and the partition once, before any client starts (e.g. before Ray), so
a bad file or an impossible split fails there in one line, and the later load in that process is free.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import datasets
import torch

from fedkron.data.encode import encode_dataset, eval_sample
from fedkron.data.loaders import load_splits, resolve_source
from fedkron.data.partition import PartitionError, partition_indices
from fedkron.data.tasks import TaskSpec, get_task

_MAX_ENCODED = 256  # partitions kept per process; each is a few MB at most
_ENCODED: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()


def get_splits(
    task: str | TaskSpec, source: str = "auto", data_dir: str | os.PathLike | None = None, seed: int = 0
) -> datasets.DatasetDict:
    """`load_splits`, loaded once per process."""
    spec = get_task(task)
    source, data_dir = resolve_source(spec, data_dir, source)
    return _splits(spec, source, data_dir, seed)


@lru_cache(maxsize=8)
def _splits(spec: TaskSpec, source: str, data_dir: str | None, seed: int) -> datasets.DatasetDict:
    return load_splits(spec, data_dir=data_dir, source=source, seed=seed)


@lru_cache(maxsize=32)
def _partitions(
    spec: TaskSpec,
    source: str,
    data_dir: str | None,
    seed: int,
    split: str,
    num_partitions: int,
    scheme: str,
    alpha: float,
    min_size: int | None,
) -> tuple[tuple[int, ...], ...]:
    if scheme == "natural" and spec.natural_id is None:
        raise PartitionError(
            f"fedkron.data: task {spec.name!r} has no natural id; scheme 'natural' needs e.g. 'sentiment'"
        )
    rows = _splits(spec, source, data_dir, seed)[split]
    if isinstance(num_partitions, int) and len(rows) < num_partitions:
        what = "training" if split == "train" else f"{split!r}"
        raise PartitionError(
            f"fedkron.data: task {spec.name} has {len(rows)} {what} rows, "
            f"fewer than the {num_partitions} clients asked for"
        )
    parts = partition_indices(
        rows,
        num_partitions,
        scheme,
        alpha=alpha,
        seed=seed,
        min_partition_size=min_size,
        natural_id=spec.natural_id or "domain",
    )
    return tuple(tuple(p) for p in parts)


def _encoded(key: tuple, make) -> dict[str, torch.Tensor]:
    if key in _ENCODED:
        _ENCODED.move_to_end(key)
        return _ENCODED[key]
    tensors = make()
    _ENCODED[key] = tensors
    if len(_ENCODED) > _MAX_ENCODED:
        _ENCODED.popitem(last=False)
    return tensors


def cached_tensors(key: tuple, make) -> dict[str, torch.Tensor]:
    """``make()``'s tensors, made once per process for ``key`` (kept in the same bounded cache as the
    encoded partitions)."""
    return _encoded(("custom",) + tuple(key), make)


def get_partition_rows(
    task: str | TaskSpec,
    partition_id: int,
    num_partitions: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    min_partition_size: int | None = None,
) -> datasets.Dataset:
    """The rows of one client's partition (normalised columns), as `get_client_data` encodes them."""
    spec = get_task(task)
    source, data_dir = resolve_source(spec, data_dir, source)
    if not 0 <= partition_id < num_partitions:
        raise PartitionError(f"fedkron.data: partition_id {partition_id} outside range({num_partitions})")
    parts = _partitions(spec, source, data_dir, seed, split, num_partitions, scheme, float(alpha), min_partition_size)
    return _splits(spec, source, data_dir, seed)[split].select(parts[partition_id])


def tokenizer_name(tokenizer) -> str:
    """The name that keys a tokenizer in the cache (its `name_or_path`)."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def get_client_data(
    task: str | TaskSpec,
    partition_id: int,
    num_partitions: int,
    tokenizer,
    max_length: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    min_partition_size: int | None = None,
    layout: str = "cross",
) -> dict[str, torch.Tensor]:
    """Encoded tensors of one client's partition (see `encode_dataset`), cached per process."""
    spec = get_task(task)
    source, data_dir = resolve_source(spec, data_dir, source)
    if not 0 <= partition_id < num_partitions:
        raise PartitionError(f"fedkron.data: partition_id {partition_id} outside range({num_partitions})")
    key = (
        "client",
        spec,
        source,
        data_dir,
        seed,
        split,
        scheme,
        num_partitions,
        float(alpha),
        min_partition_size,
        partition_id,
        tokenizer_name(tokenizer),
        max_length,
        layout,
    )

    def make() -> dict[str, torch.Tensor]:
        parts = _partitions(
            spec, source, data_dir, seed, split, num_partitions, scheme, float(alpha), min_partition_size
        )
        rows = _splits(spec, source, data_dir, seed)[split].select(parts[partition_id])
        return encode_dataset(spec, rows, tokenizer, max_length, layout)

    return _encoded(key, make)


def get_eval_split(
    task: str | TaskSpec,
    *,
    max_samples: int | None = None,
    seed: int = 0,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """The held-out test split, subsampled to `max_samples` rows with `eval_sample` (None: all)."""
    return eval_sample(get_splits(task, source, data_dir, seed)["test"], max_samples, seed)


def get_eval_data(
    task: str | TaskSpec,
    tokenizer,
    max_length: int,
    *,
    max_samples: int | None = None,
    seed: int = 0,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    layout: str = "cross",
) -> dict[str, torch.Tensor]:
    """Encoded tensors of `get_eval_split` for central evaluation, cached per process."""
    spec = get_task(task)
    source, data_dir = resolve_source(spec, data_dir, source)
    key = ("eval", spec, source, data_dir, seed, max_samples, tokenizer_name(tokenizer), max_length, layout)
    return _encoded(
        key,
        lambda: encode_dataset(
            spec,
            get_eval_split(spec, max_samples=max_samples, seed=seed, source=source, data_dir=data_dir),
            tokenizer,
            max_length,
            layout,
        ),
    )


@dataclass(frozen=True)
class DataCheck:
    """What `check_task_data` found: where the data came from and how it splits."""

    task: str
    source: str
    data_dir: str | None
    train_rows: int
    test_rows: int
    partition_sizes: tuple[int, ...]


def check_task_data(
    task: str | TaskSpec,
    data_dir: str | os.PathLike | None = None,
    num_partitions: int = 1,
    scheme: str = "iid",
    seed: int = 0,
    *,
    alpha: float = 0.5,
    source: str = "auto",
    min_partition_size: int | None = None,
) -> DataCheck:
    """Load and partition the task's data as the clients will, so that a bad file or an impossible split
    raises here (DataFormatError / DataNotFoundError / PartitionError, one line each) before any client
    starts. Cached: the clients' later load in this process costs nothing. Arguments as in
    `get_client_data`.
    """
    spec = get_task(task)
    source, data_dir = resolve_source(spec, data_dir, source)
    splits = _splits(spec, source, data_dir, seed)
    parts = _partitions(spec, source, data_dir, seed, "train", num_partitions, scheme, float(alpha), min_partition_size)
    return DataCheck(spec.name, source, data_dir, len(splits["train"]), len(splits["test"]), tuple(map(len, parts)))


def clear_cache() -> None:
    """Forget every cached split, partition and tensor of this process."""
    _splits.cache_clear()
    _partitions.cache_clear()
    _ENCODED.clear()
