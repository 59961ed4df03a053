"""A ClientApp that misbehaves on purpose, for fault-injection tests and benchmarks (test-only:
not part of the installed package; benchmarks import it from the repository's tests/ folder).

Chosen partitions run the real training, then corrupt their reply in one of several ways; the
rest behave normally. The server must drop (or robustly absorb) what the bad ones send.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedkron.client.worker import handle_evaluate, handle_query, handle_train
from fedkron.compression import decode, from_records, get_codec, to_records
from fedkron.protocol import ARRAYS as ARRAYS_KEY
from fedkron.protocol import MANIFEST as MANIFEST_KEY

FAULTS = ("nan-scales", "truncated", "bad-manifest", "wrong-shape", "scale-100", "sign-flip", "raise")


def _reencode(reply: Message, change) -> None:
    """Decode the reply's update, apply ``change`` and encode it again with the same codec: a
    well-formed payload carrying a malicious update (what validation alone cannot catch)."""
    content = reply.content
    encoded = from_records(content[ARRAYS_KEY], content[MANIFEST_KEY])
    update = change(decode(encoded))
    content[ARRAYS_KEY], content[MANIFEST_KEY] = to_records(
        get_codec(encoded.codec, **encoded.codec_options).encode(update))


def corrupt(reply: Message, fault: str) -> Message:
    """Return ``reply`` with its payload damaged by ``fault``."""
    content = reply.content
    arrays: ArrayRecord = content[ARRAYS_KEY]
    if fault == "scale-100":
        _reencode(reply, lambda u: {k: v * 100 for k, v in u.items()})
    elif fault == "sign-flip":
        _reencode(reply, lambda u: {k: -v for k, v in u.items()})
    elif fault == "wrong-shape":
        _reencode(reply, lambda u: {k: v.reshape(-1)[: max(v.numel() - 1, 0)] for k, v in u.items()})
    elif fault == "nan-scales":
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


def make_faulty_app(fault: str | dict[int, str], partitions: tuple[int, ...] = ()) -> ClientApp:
    """A ClientApp whose clients in ``partitions`` send ``fault`` (or raise, for ``"raise"``);
    or, with a dict, a fault per partition id."""
    faults = dict(fault) if isinstance(fault, dict) else {p: fault for p in partitions}
    unknown = sorted(set(faults.values()) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown fault {unknown[0]!r}; choose from {FAULTS}")
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config.get("partition-id", -1))
        kind = faults.get(pid)
        if kind == "raise":
            raise RuntimeError(f"injected failure on partition {pid}")
        reply = handle_train(msg, context)
        return corrupt(reply, kind) if kind else reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_query(msg, context)

    return app
