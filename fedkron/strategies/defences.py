"""Default defences against one client steering the global adapter: a norm bound relative to the
round's own updates, and example counts capped at what a client can hold."""

from __future__ import annotations

import numpy as np


def within_norm_bound(norms: list[float], last_norms: list[float], factor: float) -> list[int]:
    """Indices of the updates whose norm is at most ``factor`` × the median norm of this round's
    replies and the last round's accepted ones: a robust reference one client cannot move much, so
    a single well-formed but huge update cannot wreck the global adapter (``factor`` 0: all)."""
    if not factor or not norms:
        return list(range(len(norms)))
    bound = factor * float(np.median(list(norms) + list(last_norms)))
    return [i for i, n in enumerate(norms) if n <= bound]


def capped_weights(claimed: list[int], known: list[int | None], max_share: float) -> list[float]:
    """Example counts as aggregation weights: capped at the partition size the server knows a client
    holds (``known``), and for clients it cannot check so that none gets more than ``max_share`` of
    the round's total (water-filling: cap, then recheck against the new total)."""
    weights = [float(min(c, k) if k else c) for c, k in zip(claimed, known)]
    unchecked = [k is None for k in known]
    if max_share >= 1 or len(weights) < 2:
        return weights
    for _ in range(len(weights)):
        limit = max_share * sum(weights)
        over = [i for i, w in enumerate(weights) if unchecked[i] and w > limit * (1 + 1e-12)]
        if not over:
            break
        others = sum(w for i, w in enumerate(weights) if i not in over)
        cap = max_share * others / (1 - max_share * len(over)) if max_share * len(over) < 1 else min(weights)
        for i in over:
            weights[i] = cap
    return weights
