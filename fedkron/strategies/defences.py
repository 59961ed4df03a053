"""Default defences against one client steering the global adapter: a norm bound relative to a
reference no single reply can move, and example counts capped at what a client can hold."""

from __future__ import annotations

import math

import torch


def state_norm(state: dict[str, torch.Tensor]) -> float:
    """L2 norm of a whole adapter state (float64, so a large adapter does not overflow)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in state.values()))


def low_median(values: list[float]) -> float:
    """The median, and of an even count the lower middle value: of two values the smaller, so one
    value of two cannot drag the reference up."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


class NormBound:
    """Rejects updates whose norm is more than ``factor`` × a reference: the (low) median of this
    round's norms together with the last round's reference.

    The previous reference is one vote no client controls, so the bound holds with two replies
    (median of three values) and with one (the smaller of two). It starts at ``anchor``, the norm
    of the initial global adapter: a trusted scale before any update was seen (an honest round's
    update moves an adapter by far less than ten times its own norm). A rejected or huge norm
    never becomes the reference: the reference is a median in which it is the largest value.
    ``factor`` 0 turns the bound off.
    """

    def __init__(self, factor: float, anchor: float):
        self.factor = factor
        self.reference = anchor

    def keep(self, norms: list[float]) -> list[int]:
        """Indices of the norms within the bound; the reference moves to this round's median."""
        if not self.factor or not norms:
            return list(range(len(norms)))
        reference = low_median(list(norms) + [self.reference])
        if reference > 0:  # a round of zero updates keeps the last scale
            self.reference = reference
        bound = self.factor * self.reference
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


def eval_weights(claimed: list[int], max_rows: int, max_share: float) -> list[float]:
    """Weights of federated-evaluation replies: no client scores more than ``max_rows`` rows (the
    run's ``--eval-samples``; 0 = whole split, no cap), and since the server does not know how many
    held-out rows a client holds, none gets more than ``max_share`` of the total."""
    rows = [min(c, max_rows) if max_rows > 0 else c for c in claimed]
    return capped_weights(rows, [None] * len(rows), max_share)
