"""Tasks, their data and its split across clients.

Flow: `get_task` (registry) or `custom_task` (your own files) -> `load_splits` (local folder /
packaged SST-2 and BoolQ / hub / custom files, normalised columns) -> `partition` (flwr-datasets
partitioners) -> `encode_dataset` (tensors, once). `check_task_data` runs load + partition up front.
`get_client_data` / `get_eval_data` chain these behind a process-level cache for Flower clients
and the server; the returned tensors are shared, treat them as read-only.
"""

from fedkron.data.bundle import build_packaged_sst2, packaged_boolq_dir
from fedkron.data.cache import (
    DataCheck,
    cached_tensors,
    check_task_data,
    clear_cache,
    get_client_data,
    get_eval_data,
    get_eval_split,
    get_partition_rows,
    get_splits,
)
from fedkron.data.custom import custom_task, infer_labels
from fedkron.data.encode import EncodeError, encode_dataset, eval_sample, majority_baseline
from fedkron.data.loaders import DATA_DIR_ENV, PACKAGED_TASKS, SOURCES, load_splits, resolve_source
from fedkron.data.partition import SCHEMES, PartitionError, label_histogram, partition, partition_indices
from fedkron.data.records import DataFormatError, DataNotFoundError
from fedkron.data.tasks import TASKS, TaskSpec, UnknownTaskError, get_task

__all__ = [
    "cached_tensors",
    "get_partition_rows",
    "DATA_DIR_ENV",
    "DataCheck",
    "PACKAGED_TASKS",
    "SCHEMES",
    "SOURCES",
    "TASKS",
    "DataFormatError",
    "DataNotFoundError",
    "EncodeError",
    "PartitionError",
    "TaskSpec",
    "UnknownTaskError",
    "build_packaged_sst2",
    "check_task_data",
    "clear_cache",
    "custom_task",
    "encode_dataset",
    "eval_sample",
    "get_client_data",
    "get_eval_data",
    "get_eval_split",
    "get_splits",
    "get_task",
    "infer_labels",
    "label_histogram",
    "load_splits",
    "majority_baseline",
    "packaged_boolq_dir",
    "partition",
    "partition_indices",
    "resolve_source",
]
