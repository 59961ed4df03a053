"""What a Flower strategy remembers between rounds, as tensors and JSON for a checkpoint.

Flower's strategies keep their server-optimiser state in attributes (FedAvgM's momentum, FedOpt's
moments, the adaptive-clipping norm, the privacy accountant) and have no state_dict. This walks a
wrapper chain (``.strategy``) and saves exactly those attributes, so a resumed run continues with
the same server state as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedkron.flwr_private import STRATEGY_ARRAY_DICTS as ARRAY_DICTS
from fedkron.flwr_private import STRATEGY_ARRAY_LISTS as ARRAY_LISTS
from fedkron.flwr_private import STRATEGY_ARRAY_RECORDS as ARRAY_RECORDS
from fedkron.flwr_private import STRATEGY_FLOATS as FLOATS


def chain(strategy) -> list:
    """The wrapper itself and every strategy it wraps, outermost first."""
    out = [strategy]
    while hasattr(out[-1], "strategy"):
        out.append(out[-1].strategy)
    return out


def strategy_state(strategy) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON-able values) of every stateful attribute along the chain."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict = {}
    for depth, s in enumerate(chain(strategy)):
        prefix = f"{depth}/"
        for name in ARRAY_DICTS:
            for key, arr in (getattr(s, name, None) or {}).items():
                tensors[f"{prefix}{name}/{key}"] = torch.from_numpy(np.array(arr))
        for name in ARRAY_RECORDS:
            record = getattr(s, name, None)
            if isinstance(record, ArrayRecord) and type(s).__name__ == "FedAvgM":
                for key, arr in record.items():
                    tensors[f"{prefix}{name}/{key}"] = torch.from_numpy(np.array(arr.numpy()))
                values[f"{prefix}{name}"] = list(record.keys())  # its order pairs it with other records
        for name in ARRAY_LISTS:
            for i, arr in enumerate(getattr(s, name, None) or []):
                tensors[f"{prefix}{name}/{i}"] = torch.from_numpy(np.array(arr))
        for name in FLOATS:
            if isinstance(getattr(s, name, None), float) and type(s).__name__.endswith("AdaptiveClipping"):
                values[f"{prefix}{name}"] = getattr(s, name)
        accountant = getattr(s, "accountant", None)
        if accountant is not None:
            values[f"{prefix}accountant"] = accountant.state_dict()
    return tensors, values


def load_strategy_state(strategy, tensors: dict[str, torch.Tensor], values: dict) -> None:
    """Put what :func:`strategy_state` saved back into a freshly built, identical chain."""
    grouped: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, tensor in tensors.items():
        depth, name, item = key.split("/", 2)
        grouped.setdefault((int(depth), name), {})[item] = tensor.numpy().copy()
    links = chain(strategy)
    for (depth, name), items in grouped.items():
        s = links[depth]
        if name in ARRAY_DICTS:
            setattr(s, name, items)
        elif name in ARRAY_RECORDS:
            order = values[f"{depth}/{name}"]
            setattr(s, name, ArrayRecord({k: Array(items[k]) for k in order}))
        elif name in ARRAY_LISTS:
            setattr(s, name, [items[str(i)] for i in range(len(items))])
    for key, value in values.items():
        depth, name = key.split("/", 1)
        s = links[int(depth)]
        if name == "accountant":
            s.accountant.load_state_dict(value)
        elif name in FLOATS:
            setattr(s, name, float(value))


def set_current_arrays(strategy, arrays: ArrayRecord) -> None:
    """Tell a strategy that keeps its own copy of the global arrays (FedAvgM) what clients were
    actually sent (the decoded broadcast), so its pseudo-gradient is measured from there."""
    for s in chain(strategy):
        if type(s).__name__ == "FedAvgM" and getattr(s, "current_arrays", None) is not None:
            s.current_arrays = arrays
