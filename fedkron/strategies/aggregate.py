"""Per-factor aggregation of decoded client updates.

Each adapter factor is averaged on its own (the mission's per-factor FedAvg). Note that this is
not the mean of the clients' ΔW: mean(A_i) ⊗ mean(B_i) ≠ mean(A_i ⊗ B_i). The ``exact``
aggregation mode keeps A and B2 frozen so ΔW is linear in what is averaged.
"""

from __future__ import annotations

import torch


def weighted_mean(updates: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Σ w_i u_i / Σ w_i, factor by factor (float64 accumulation)."""
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to > 0 (got {total})")
    out = {}
    for name in updates[0]:
        acc = torch.zeros_like(updates[0][name], dtype=torch.float64)
        for update, w in zip(updates, weights):
            acc += update[name].double() * (w / total)
        out[name] = acc.to(updates[0][name].dtype)
    return out


def coordinate_median(updates: list[dict[str, torch.Tensor]], weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Coordinate-wise median of each factor (unweighted: robust to a minority of bad clients)."""
    if not updates:
        raise ValueError("coordinate_median needs at least one update")
    return {name: torch.stack([u[name] for u in updates]).median(dim=0).values for name in updates[0]}


def trimmed_mean(updates: list[dict[str, torch.Tensor]], weights: list[float] | None = None,
                 trim: float = 0.2) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean after dropping the ``trim`` share of largest and smallest values."""
    if not updates:
        raise ValueError("trimmed_mean needs at least one update")
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5) (got {trim})")
    n = len(updates)
    k = int(trim * n)
    out = {}
    for name in updates[0]:
        stacked = torch.stack([u[name] for u in updates]).sort(dim=0).values
        out[name] = stacked[k : n - k].mean(dim=0)
    return out


def clip_update(update: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """Scale an update down to global L2 norm ``max_norm`` (no-op when ``max_norm`` ≤ 0)."""
    if max_norm <= 0:
        return update
    norm = float(torch.sqrt(sum((t.double() ** 2).sum() for t in update.values())))
    if norm <= max_norm:
        return update
    return {k: v * (max_norm / norm) for k, v in update.items()}


AGGREGATORS = {"fedavg": weighted_mean, "exact": weighted_mean, "median": coordinate_median}
# "trimmed-mean" takes its trim share from the run config: see PerFactorFedAvg._aggregate.
