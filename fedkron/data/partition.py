"""Split a loaded training set across clients with flwr-datasets partitioners, deterministically per seed.

Schemes:
* ``iid``       - rows shuffled with `seed`, then `IidPartitioner` (contiguous shards of the shuffled order;
                  the partitioner itself does not shuffle).
* ``dirichlet`` - `DirichletPartitioner` on ``label`` (label skew; smaller `alpha` = more skew).
* ``natural``   - `NaturalIdPartitioner` on the task's natural id (sentiment: ``domain``); with more
                  partitions than ids, each id's rows are split IID over a group of
                  ``num_partitions / num_ids`` clients (partition ``p`` holds id ``p // group``).

flwr_datasets is imported inside the functions: its package import pulls its plotting helpers
(~3.6 s here on top of datasets and torch), which every `import fedkron.data` would otherwise pay.

The partitioners run on a two-column index table (``label`` or the id, plus the row number), so the
result is a list of row-index lists that `partition` turns into `Dataset.select` views.
"""

from __future__ import annotations

import warnings

import datasets
import numpy as np

from fedkron.data.records import column
from fedkron.logs import progress_bars_hidden

SCHEMES = ("iid", "dirichlet", "natural")
_ROW = "__row"


class PartitionError(ValueError):
    """Impossible partition request (the message says which argument)."""


def partition_indices(
    dataset: datasets.Dataset,
    num_partitions: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_partition_size: int | None = None,
    natural_id: str = "domain",
) -> list[list[int]]:
    """Row indices of each partition; together they cover every row exactly once.

    `min_partition_size` (dirichlet only): rows every partition must get; default
    ``max(1, min(10, len(dataset) // (4 * num_partitions)))`` (flwr's 10, eased for small sets).
    """
    n = len(dataset)
    if not isinstance(num_partitions, int) or num_partitions < 1:
        raise PartitionError(f"fedkron.data.partition: num_partitions must be an int >= 1, got {num_partitions!r}")
    if num_partitions > n:
        raise PartitionError(f"fedkron.data.partition: {n} rows, fewer than the {num_partitions} partitions asked for")
    if scheme == "iid":
        return _iid(np.arange(n), num_partitions, seed)
    if scheme == "dirichlet":
        if not alpha > 0:
            raise PartitionError(f"fedkron.data.partition: dirichlet alpha must be > 0, got {alpha!r}")
        if min_partition_size is None:
            min_partition_size = max(1, min(10, n // (4 * num_partitions)))
        return _dirichlet(dataset, num_partitions, alpha, seed, min_partition_size)
    if scheme == "natural":
        return _natural(dataset, num_partitions, seed, natural_id)
    raise PartitionError(f"fedkron.data.partition: unknown scheme {scheme!r}; expected one of {SCHEMES}")


def partition(dataset: datasets.Dataset, num_partitions: int, scheme: str = "iid", **kwargs) -> list[datasets.Dataset]:
    """The partitions as `datasets.Dataset`s (arguments as in `partition_indices`)."""
    return [dataset.select(idx) for idx in partition_indices(dataset, num_partitions, scheme, **kwargs)]


def _index_table(**columns) -> datasets.Dataset:
    # Arrow format: the partitioners call np.array(dataset[col]), per-row slow in any other format.
    return datasets.Dataset.from_dict(columns).with_format("arrow")


def _rows(partitioner, num_partitions: int) -> list[list[int]]:
    return [column(partitioner.load_partition(p), _ROW) for p in range(num_partitions)]


def _iid(rows: np.ndarray, num_partitions: int, seed: int) -> list[list[int]]:
    from flwr_datasets.partitioner import IidPartitioner  # here: flwr_datasets imports `datasets` (seconds)

    shuffled = np.random.default_rng(seed).permutation(rows)
    partitioner = IidPartitioner(num_partitions)
    partitioner.dataset = _index_table(**{_ROW: shuffled.tolist()})
    return _rows(partitioner, num_partitions)


def _dirichlet(dataset, num_partitions: int, alpha: float, seed: int, min_size: int) -> list[list[int]]:
    from flwr_datasets.partitioner import DirichletPartitioner  # here: flwr_datasets imports `datasets` (seconds)

    partitioner = DirichletPartitioner(
        num_partitions, partition_by="label", alpha=alpha, min_partition_size=min_size, seed=seed
    )
    partitioner.dataset = _index_table(label=column(dataset, "label"), **{_ROW: list(range(len(dataset)))})
    with warnings.catch_warnings():  # the partitioner warns on every resample; we report the final failure
        warnings.simplefilter("ignore", UserWarning)
        try:
            return _rows(partitioner, num_partitions)
        except ValueError as err:
            raise PartitionError(
                f"fedkron.data.partition: dirichlet (alpha={alpha}) could not give each of {num_partitions} "
                f"partitions >= {min_size} of {len(dataset)} rows in 10 draws; raise alpha, lower "
                f"min_partition_size or use fewer partitions ({err})"
            ) from err


def _natural(dataset, num_partitions: int, seed: int, natural_id: str) -> list[list[int]]:
    if natural_id not in dataset.column_names:
        raise PartitionError(
            f"fedkron.data.partition: scheme 'natural' needs a {natural_id!r} column; this dataset has "
            f"{dataset.column_names} (only tasks with a natural id, e.g. 'sentiment', support it)"
        )
    from flwr_datasets.partitioner import NaturalIdPartitioner  # here: flwr_datasets imports `datasets` (seconds)

    ids = column(dataset, natural_id)
    partitioner = NaturalIdPartitioner(partition_by=natural_id)
    partitioner.dataset = _index_table(**{natural_id: ids, _ROW: list(range(len(ids)))})
    num_ids = partitioner.num_partitions
    if num_partitions % num_ids:
        raise PartitionError(
            f"fedkron.data.partition: scheme 'natural' needs num_partitions to be a multiple of the "
            f"{num_ids} distinct {natural_id!r} values, got {num_partitions}"
        )
    group = num_partitions // num_ids
    with progress_bars_hidden():  # its first load_partition draws a bar, in every client's Ray actor
        rows_by_partition = _rows(partitioner, num_ids)
    by_id = {partitioner.partition_id_to_natural_id[p]: rows for p, rows in enumerate(rows_by_partition)}
    out: list[list[int]] = []
    for k, key in enumerate(sorted(by_id)):  # sorted: partition ids do not depend on row order
        rows = by_id[key]
        if group > len(rows):
            raise PartitionError(f"fedkron.data.partition: {group} partitions for the {len(rows)} rows of {key!r}")
        out.extend(_iid(np.asarray(rows), group, seed + k))
    return out


def label_histogram(dataset: datasets.Dataset, num_labels: int) -> np.ndarray:
    """Counts per label, e.g. to show a partition's skew."""
    return np.bincount(np.asarray(column(dataset, "label"), dtype=np.int64), minlength=num_labels)
