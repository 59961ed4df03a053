"""A ClientApp that misbehaves on purpose, for measuring the server's defences: the tests and
``benchmarks/bench_faults.py`` run it, and a researcher can put it in a simulation to attack a
strategy (``run_sim(cfg, client_app=make_faulty_app({1: "scale-100"}))``).

Chosen partitions run the real training, then corrupt their reply in one of several ways; the
rest behave normally. The server must drop (or robustly absorb) what the bad ones send.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedkron.client.worker import handle_evaluate, handle_query, handle_train
from fedkron.compression import decode, from_records, get_codec, to_records
from fedkron.protocol import ARRAYS as ARRAYS_KEY
from fedkron.protocol import MANIFEST as MANIFEST_KEY

FAULTS = (
    "nan-scales",
    "truncated",
    "bad-manifest",
    "wrong-shape",
    "scale-100",
    "sign-flip",
    "raise",
    # a reply's other fields (issue: one client could end the run)
    "nan-partition",
    "huge-header",
    "claim-examples",
    "overflow",
    "zero-update",
    "scale-1e30",
)
QUERY_FAULTS = ("no-info", "dup-partition", "float-partition")  # answers to the partition query
EVAL_FAULTS = ("claim-eval",)  # evaluation replies: 10^9 examples scored, accuracy 1.0


def _reencode(reply: Message, change) -> None:
    """Decode the reply's update, apply ``change`` and encode it again with the same codec: a
    well-formed payload carrying a malicious update (what validation alone cannot catch)."""
    content = reply.content
    encoded = from_records(content[ARRAYS_KEY], content[MANIFEST_KEY])
    update = change(decode(encoded))
    content[ARRAYS_KEY], content[MANIFEST_KEY] = to_records(
        get_codec(encoded.codec, **encoded.codec_options).encode(update)
    )


def corrupt(reply: Message, fault: str) -> Message:
    """Return ``reply`` with its payload damaged by ``fault``."""
    content = reply.content
    arrays: ArrayRecord = content[ARRAYS_KEY]
    if fault == "scale-100":
        _reencode(reply, lambda u: {k: v * 100 for k, v in u.items()})
    elif fault == "scale-1e30":  # well-formed and finite in fp32: ×1e30
        _reencode(reply, lambda u: {k: v * 1e30 for k, v in u.items()})
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
    elif fault == "nan-partition":
        content["metrics"]["partition-id"] = float("nan")
    elif fault == "claim-examples":
        content["metrics"]["num-examples"] = 10**9
    elif fault == "overflow":  # well-formed, finite in fp32, and enormous
        _reencode(reply, lambda u: {k: torch.sign(v) * 3e30 for k, v in u.items()})
    elif fault == "zero-update":
        _reencode(reply, lambda u: {k: torch.zeros_like(v) for k, v in u.items()})
    elif fault == "huge-header":  # the .npy bytes claim 10^12 values: np.load would try to allocate them
        arr = arrays["codes"]
        header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (1000000000000,), }"
        header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
        arrays["codes"] = Array(
            dtype=arr.dtype,
            shape=tuple(arr.shape),
            stype=arr.stype,
            data=b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header,
        )
    else:
        raise ValueError(f"unknown fault {fault!r}; choose from {FAULTS}")
    return reply


def make_faulty_app(fault: str | dict[int, str], partitions: tuple[int, ...] = (), only_in: str = "") -> ClientApp:
    """A ClientApp whose clients in ``partitions`` send ``fault`` (or raise, for ``"raise"``);
    or, with a dict, a fault per partition id. With ``only_in``, clients misbehave only in runs
    whose results folder name contains it (a clean and an attacked run in one simulation)."""
    faults = dict(fault) if isinstance(fault, dict) else {p: fault for p in partitions}
    unknown = sorted(set(faults.values()) - set(FAULTS) - set(QUERY_FAULTS) - set(EVAL_FAULTS))
    if unknown:
        raise ValueError(f"unknown fault {unknown[0]!r}; choose from {FAULTS}")
    app = ClientApp()

    def attacking(msg: Message) -> bool:
        return not only_in or only_in in str(msg.content["config"].get("out", ""))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config.get("partition-id", -1))
        kind = faults.get(pid) if attacking(msg) and faults.get(pid) not in EVAL_FAULTS else None
        if kind == "raise":
            raise RuntimeError(f"injected failure on partition {pid}")
        reply = handle_train(msg, context)
        return corrupt(reply, kind) if kind else reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        reply = handle_evaluate(msg, context)
        if attacking(msg) and faults.get(int(context.node_config.get("partition-id", -1))) == "claim-eval":
            reply.content["metrics"]["num-examples"], reply.content["metrics"]["eval-accuracy"] = 10**9, 1.0
        return reply

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        reply = handle_query(msg, context)
        kind = faults.get(int(context.node_config.get("partition-id", -1)))
        if kind == "no-info":
            del reply.content["info"]
        elif kind == "dup-partition":
            reply.content["info"]["partition-id"] = 0
        elif kind == "float-partition":
            reply.content["info"]["partition-id"] = 1.5
        return reply

    return app
