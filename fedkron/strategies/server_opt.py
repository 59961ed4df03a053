"""Server optimisers on the averaged update (FedOpt family: Reddi et al., 2021).

The averaged client update acts as a pseudo-gradient (negated): ``sgd`` applies it with the
server learning rate (plain FedAvg at lr 1), ``avgm`` adds server momentum (FedAvgM), ``adam``
keeps per-coordinate moments (FedAdam). State is plain tensors, so it checkpoints as safetensors.
"""

from __future__ import annotations

import torch


class ServerOptimizer:
    def __init__(self, kind: str = "sgd", lr: float = 1.0, momentum: float = 0.9,
                 betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-3):
        if kind not in ("sgd", "avgm", "adam"):
            raise ValueError(f"server optimiser {kind!r} is not one of sgd, avgm, adam")
        self.kind, self.lr, self.momentum, self.betas, self.eps = kind, lr, momentum, betas, eps
        self.state: dict[str, torch.Tensor] = {}
        self.steps = 0

    def step(self, global_state: dict[str, torch.Tensor], mean_update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """New global factors from the current ones and the averaged update."""
        self.steps += 1
        out = {}
        for name, w in global_state.items():
            u = mean_update[name].to(w.dtype)
            if self.kind == "sgd":
                out[name] = w + self.lr * u
            elif self.kind == "avgm":
                v = self.state.get(f"{name}::v", torch.zeros_like(w)) * self.momentum + u
                self.state[f"{name}::v"] = v
                out[name] = w + self.lr * v
            else:
                b1, b2 = self.betas
                m = self.state.get(f"{name}::m", torch.zeros_like(w)) * b1 + (1 - b1) * u
                v = self.state.get(f"{name}::v", torch.zeros_like(w)) * b2 + (1 - b2) * u * u
                self.state[f"{name}::m"], self.state[f"{name}::v"] = m, v
                out[name] = w + self.lr * m / (v.sqrt() + self.eps)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.state, "__steps__": torch.tensor(self.steps)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.steps = int(state.pop("__steps__", torch.tensor(0)))
        self.state = {k: v.clone() for k, v in state.items()}
