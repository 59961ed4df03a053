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
