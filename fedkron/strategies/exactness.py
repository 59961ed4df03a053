"""How far per-factor averaging is from averaging the clients' ΔW.

Per-factor FedAvg averages A, B1, B2 separately, but mean(A_i) ⊗ mean(B_i) ≠ mean(A_i ⊗ B_i).
The ``exact`` mode (:func:`fedkron.protocol.sent_names`) trains and sends only the output-side
factor while the others stay frozen at their shared seeded init, so ΔW is linear in what is
averaged and the mean of the factors *is* the mean of the ΔW: its measured error is 0.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


def layer_groups(roles: dict[str, str]) -> dict[str, dict[str, str]]:
    """layer prefix → {role: state name} for adapter factors (full modules left out)."""
    groups: dict[str, dict[str, str]] = defaultdict(dict)
    for name, role in roles.items():
        if role != "full":
            groups[name.rsplit(".", 1)[0]][role] = name
    return dict(groups)


def dense_delta(f: dict[str, torch.Tensor]) -> torch.Tensor:
    """Unscaled dense ΔW of one layer from its factors by role (for measurement only)."""
    if "B1" in f:
        return torch.kron(f["A"], f["B1"] @ f["B2"])
    if "B" in f:
        return torch.kron(f["A"], f["B"])
    return f["lora_B"] @ f["lora_A"]


def dense_elements(shapes: dict[str, torch.Size], roles: dict[str, str]) -> int:
    """How many values the dense ΔW of every adapted layer holds (the cost of measuring it)."""
    total = 0
    for f in layer_groups(roles).values():
        if "lora_A" in f:
            total += shapes[f["lora_B"]][0] * shapes[f["lora_A"]][1]
        else:
            b = (shapes[f["B1"]][0], shapes[f["B2"]][1]) if "B1" in f else tuple(shapes[f["B"]])
            total += shapes[f["A"]][0] * b[0] * shapes[f["A"]][1] * b[1]
    return total


def aggregation_error(
    global_state: dict[str, torch.Tensor],
    updates: list[dict[str, torch.Tensor]],
    weights: list[float],
    roles: dict[str, str],
) -> float:
    """‖ΔW(mean factors) − mean ΔW_i‖ / ‖mean ΔW_i − ΔW_global‖ over all adapted layers.

    Factors missing from an update (frozen in exact mode) count as unchanged. 0 means the
    averaging is exact; per-factor FedAvg of Kron factors is typically far from 0.
    """
    total = float(sum(weights))
    err_sq = ref_sq = 0.0
    for factors in layer_groups(roles).values():
        locals_ = [
            {r: (global_state[n] + u[n] if n in u else global_state[n]).double() for r, n in factors.items()}
            for u in updates
        ]
        mean_delta = sum(dense_delta(f) * (w / total) for f, w in zip(locals_, weights))
        mean_factors = {r: sum(f[r] * (w / total) for f, w in zip(locals_, weights)) for r in factors}
        base = dense_delta({r: global_state[n].double() for r, n in factors.items()})
        err_sq += float((dense_delta(mean_factors) - mean_delta).pow(2).sum())
        ref_sq += float((mean_delta - base).pow(2).sum())
    return math.sqrt(err_sq) / math.sqrt(ref_sq) if ref_sq > 0 else 0.0
