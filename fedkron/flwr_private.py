"""Every private Flower name fedkron uses, in one place, behind one version check.

Flower's public API is what ``flwr.app``, ``flwr.clientapp``, ``flwr.serverapp``,
``flwr.serverapp.strategy`` and ``flwr.simulation`` export. fedkron also needs a few internals,
which change between minor releases without notice: the wire serialization (the ledger counts
the bytes Flower sends: ``message_to_proto``), the Gaussian-mechanism noise of the DP wrappers
(``compute_stdv``), the simulation engine's node registration (the node → partition table), the
server-side optimizer state of FedAvgM / FedOpt (resume), and for the warm ClientApp worker
(:mod:`fedkron.deploy.warm_clientapp`) the runtime internals (the Runtime API client, task
heartbeats, the per-task steps of ``flwr-clientapp``, FAB installation). They
are tested with the releases in :data:`TESTED_FLWR` only, so importing this module with any other
Flower stops at once with a message naming both versions, instead of an ``ImportError`` or
``AttributeError`` somewhere in round 3. ``FEDKRON_ALLOW_UNTESTED_FLWR=1`` turns that into a warning.

Imported as ``fedkron.flwr_private`` by the package (``tests/test_flwr_private.py`` scans the whole
package for any other private import), and loaded by file path by ``deploy/warm_clientapp.py`` run
as a script: like it, this module imports nothing of fedkron.
"""

from __future__ import annotations

import os
import re
import warnings

import flwr

TESTED_FLWR = ((1, 41),)  # (major, minor) series the private names below were tested with
ALLOW_ENV = "FEDKRON_ALLOW_UNTESTED_FLWR"


class UntestedFlowerError(ImportError):
    """The installed Flower is not a release the private names below were tested with."""


def check_flwr_version(version: str | None = None) -> str:
    """Return ``version`` (default: the installed ``flwr.__version__``) if tested; raise otherwise."""
    version = str(flwr.__version__ if version is None else version)
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m[1]), int(m[2])) in TESTED_FLWR:
        return version
    tested = ", ".join(f"{a}.{b}.x" for a, b in TESTED_FLWR)
    msg = (
        f"fedkron uses private Flower modules tested with flwr {tested} only, "
        f"but flwr {version} is installed. Install a tested release (pip install 'flwr[simulation]=="
        f"{TESTED_FLWR[-1][0]}.{TESTED_FLWR[-1][1]}.*'), start the SuperNode with --cold (Flower's own "
        f"ClientApp processes, no private modules), or set {ALLOW_ENV}=1 to try anyway."
    )
    if os.environ.get(ALLOW_ENV) == "1":
        warnings.warn(f"{msg} Going on: {ALLOW_ENV}=1.", RuntimeWarning, stacklevel=2)
        return version
    raise UntestedFlowerError(msg)


FLWR_VERSION = check_flwr_version()  # before the imports below, which may not even exist elsewhere

# --- the private names (anything not exported by flwr.app / clientapp / serverapp / simulation) ---
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import message_from_proto, message_to_proto, recorddict_to_proto
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.differential_privacy import compute_stdv
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

# Attributes where Flower's strategies keep their server-side optimizer state (resume restores them).
STRATEGY_ARRAY_DICTS = ("m_t", "v_t")  # dict[str, ndarray]: FedAdam, FedYogi, FedAdagrad
STRATEGY_ARRAY_LISTS = ("momentum_vector",)  # list[ndarray]: FedAvgM
STRATEGY_ARRAY_RECORDS = ("current_arrays",)  # FedAvgM keeps its own copy of the global arrays
STRATEGY_FLOATS = ("clipping_norm",)  # the adaptive-clipping wrapper's current norm

__all__ = [
    "STRATEGY_ARRAY_DICTS",
    "STRATEGY_ARRAY_LISTS",
    "STRATEGY_ARRAY_RECORDS",
    "STRATEGY_FLOATS",
    "compute_stdv",
    "message_from_proto",
    "message_to_proto",
    "recorddict_to_proto",
    "vce_api",
    "ALLOW_ENV",
    "FLWR_VERSION",
    "TESTED_FLWR",
    "UntestedFlowerError",
    "check_flwr_version",
    "AcquireTaskRequest",
    "ErrorCode",
    "HeartbeatSender",
    "LoadClientAppError",
    "RuntimeHttpClient",
    "RuntimeTokenHttpInterceptor",
    "RuntimeVersionHttpInterceptor",
    "SubStatus",
    "TaskType",
    "get_load_client_app_fn",
    "install_from_fab",
    "log",
    "make_simple_http_retry_invoker",
    "make_task_heartbeat_fn_http",
    "pull_task_input",
    "push_message",
    "push_task_output",
    "start_parent_process_monitor",
]
