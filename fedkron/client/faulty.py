"""A ClientApp that misbehaves on purpose, for fault-injection tests and benchmarks.

Chosen partitions run the real training, then corrupt their reply in one of several ways; the
rest behave normally. The server must drop (or robustly absorb) what the bad ones send.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedkron.client.worker import handle_query, handle_train
from fedkron.strategies.validation import ARRAYS_KEY, MANIFEST_KEY

FAULTS = ("nan-scales", "truncated", "bad-manifest", "raise")


def corrupt(reply: Message, fault: str) -> Message:
    """Return ``reply`` with its payload damaged by ``fault``."""
    content = reply.content
    arrays: ArrayRecord = content[ARRAYS_KEY]
    if fault == "nan-scales":
        new = ArrayRecord()
        for key, arr in arrays.items():
            values = arr.numpy().copy()
            if values.dtype.kind == "f" and values.size:
                values[...] = np.nan
            new[key] = Array(values)
        content[ARRAYS_KEY] = new
    elif fault == "truncated":
        new = ArrayRecord()
        for key, arr in arrays.items():
            values = arr.numpy()
            new[key] = Array(values[: max(len(values) // 2, 0)].copy())
        content[ARRAYS_KEY] = new
    elif fault == "bad-manifest":
        manifest: ConfigRecord = content[MANIFEST_KEY]
        for key in list(manifest.keys()):
            manifest[key] = "{not json"
    else:
        raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")
    return reply


def make_faulty_app(fault: str, partitions: tuple[int, ...]) -> ClientApp:
    """A ClientApp whose clients in ``partitions`` send ``fault`` (or raise, for ``"raise"``)."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")
    app = ClientApp()
    bad = set(partitions)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config.get("partition-id", -1))
        if pid in bad and fault == "raise":
            raise RuntimeError(f"injected failure on partition {pid}")
        reply = handle_train(msg, context)
        return corrupt(reply, fault) if pid in bad else reply

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(msg, context)

    return app
