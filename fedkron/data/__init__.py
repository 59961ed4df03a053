"""Tasks, their data and its split across clients.

Flow: `get_task` (registry) -> `load_splits` (local folder / packaged BoolQ / hub, normalised
columns) -> `partition` (flwr-datasets partitioners) -> `encode_dataset` (tensors, once).
`get_client_data` / `get_eval_data` chain these behind a process-level cache for Flower clients
and the server; the returned tensors are shared, treat them as read-only.
"""

from fedkron.data.cache import clear_cache, get_client_data, get_eval_data, get_eval_split, get_splits
from fedkron.data.encode import EncodeError, encode_dataset, eval_sample, majority_baseline
from fedkron.data.loaders import (
    DATA_DIR_ENV,
    SOURCES,
    DataNotFoundError,
    load_splits,
    packaged_boolq_dir,
    resolve_source,
)
from fedkron.data.partition import SCHEMES, PartitionError, label_histogram, partition, partition_indices
from fedkron.data.records import DataFormatError
from fedkron.data.tasks import TASKS, TaskSpec, UnknownTaskError, get_task

__all__ = [
    "DATA_DIR_ENV",
    "SCHEMES",
    "SOURCES",
    "TASKS",
    "DataFormatError",
    "DataNotFoundError",
    "EncodeError",
    "PartitionError",
    "TaskSpec",
    "UnknownTaskError",
    "clear_cache",
    "encode_dataset",
    "eval_sample",
    "get_client_data",
    "get_eval_data",
    "get_eval_split",
    "get_splits",
    "get_task",
    "label_histogram",
    "load_splits",
    "majority_baseline",
    "packaged_boolq_dir",
    "partition",
    "partition_indices",
    "resolve_source",
]
