"""What both local loops (encoder heads, language models) share: the result they report, the
seeded batches, the optimizer and FedProx's proximal term."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TrainResult:
    loss: float
    num_examples: int
    steps: int


def index_batches(num_rows: int, batch_size: int, steps: int, generator: torch.Generator):
    """Yield `steps` index batches, reshuffling each epoch (so small partitions are cycled)."""
    done = 0
    while done < steps:
        perm = torch.randperm(num_rows, generator=generator)
        for start in range(0, num_rows, batch_size):
            if done == steps:
                return
            yield perm[start : start + batch_size]
            done += 1


def local_optimizer(params: list[nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer:
    """AdamW without weight decay, or SGD with momentum 0.9, over the trainable tensors."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd' (got {name!r})")


class ProximalTerm:
    """FedProx's (μ/2)·‖w − w_start‖² over the trained tensors, with w_start the global values they
    held before the first local step; 0 (and no copy kept) when μ = 0."""

    def __init__(self, params: list[nn.Parameter], mu: float):
        self.params, self.mu = params, mu
        self.start = [p.detach().clone() for p in params] if mu > 0 else None

    def __call__(self) -> torch.Tensor | float:
        if self.start is None:
            return 0.0
        return self.mu / 2 * sum((p - s).pow(2).sum() for p, s in zip(self.params, self.start))
