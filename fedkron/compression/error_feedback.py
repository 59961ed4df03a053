"""Error feedback: a client keeps what quantisation dropped and sends it next time.

With residual e_t, the client sends Q(u_t + e_t) and keeps e_{t+1} = u_t + e_t - Q(u_t + e_t),
so the sum of what was sent over k rounds differs from the sum of the true updates by the
single current residual, not by k accumulated rounding errors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .codecs import Codec
from .payload import Encoded


class ErrorFeedback:
    """Residual memory for one client; ``state_dict()`` holds plain float32 tensors
    (safetensors- and ``ArrayRecord``-compatible, e.g. for Flower's ``context.state``)."""

    def __init__(self) -> None:
        self._residual: dict[str, torch.Tensor] = {}

    def compensate(self, update: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """update + residual (float32); a residual for a tensor missing from ``update`` is an error."""
        missing = set(self._residual) - set(update)
        if missing:
            raise KeyError(
                f"fedkron.compression.ErrorFeedback: update lacks tensors with a residual: {sorted(missing)}"
            )
        out = {}
        for name, tensor in update.items():
            value = tensor.detach().to("cpu", torch.float32)
            residual = self._residual.get(name)
            if residual is not None:
                if residual.shape != value.shape:
                    raise ValueError(
                        f"fedkron.compression.ErrorFeedback: tensor {name!r} has shape {tuple(value.shape)}, "
                        f"residual {tuple(residual.shape)}"
                    )
                value = value + residual
            out[name] = value
        return out

    def record(self, sent: Mapping[str, torch.Tensor], decoded: Mapping[str, torch.Tensor]) -> None:
        """Keep sent - decoded, where ``sent`` is the compensated update before quantisation."""
        if set(sent) != set(decoded):
            raise KeyError(
                f"fedkron.compression.ErrorFeedback: sent/decoded keys differ: {sorted(set(sent) ^ set(decoded))}"
            )
        self._residual = {name: (sent[name].float() - decoded[name].float()).contiguous() for name in sent}

    def step(self, update: Mapping[str, torch.Tensor], codec: Codec) -> tuple[Encoded, dict[str, torch.Tensor]]:
        """Compensate, encode, decode and keep the new residual; returns (payload, what the server will see)."""
        compensated = self.compensate(update)
        encoded = codec.encode(compensated)
        decoded = codec.decode(encoded)
        self.record(compensated, decoded)
        return encoded, decoded

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.clone() for name, tensor in self._residual.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        residual = {}
        for name, tensor in state.items():
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise TypeError(f"fedkron.compression.ErrorFeedback: residual {name!r} must be a float tensor")
            if not torch.isfinite(tensor).all():
                raise ValueError(f"fedkron.compression.ErrorFeedback: residual {name!r} has non-finite values")
            residual[name] = tensor.detach().to("cpu", torch.float32).contiguous().clone()
        self._residual = residual

    def norm(self) -> float:
        """L2 norm of the whole residual (0.0 when empty): how much is still owed."""
        return math.sqrt(sum(float(t.double().square().sum()) for t in self._residual.values()))
