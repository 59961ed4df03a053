"""The broadcast, and the global state every client holds: the decoding of that broadcast.

With a lossy downlink codec (nf4, int8, fp16...) the server does not keep a private full-precision
state that clients never see: after each aggregation it encodes the new global factors once, and
its official global state *is* the decoded payload, bit for bit what every client decodes (the
same bitsandbytes code on the same bytes). What quantization left out is carried into the next
broadcast (server-side error feedback), so nothing is lost over rounds and nothing drifts. A
client that sat out for rounds needs no history: each broadcast is the whole current state.
"""

from __future__ import annotations

import torch

from fedkron.compression import Codec, Encoded, ErrorFeedback

LOSSLESS = ("fp32",)


class Downlink:
    def __init__(self, codec: Codec, error_feedback: bool):
        self.codec = codec
        self.ef = ErrorFeedback() if error_feedback and codec.name not in LOSSLESS else None
        self.encoded: Encoded | None = None
        self.pending: dict[str, torch.Tensor] = {}  # what the current payload encodes (EF included)

    def publish(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encode ``state`` as the next broadcast; return what clients will decode from it."""
        if self.codec.name in LOSSLESS:
            self.pending = {k: v.detach().float().clone() for k, v in state.items()}
            self.encoded = self.codec.encode(self.pending)
            return {k: v.clone() for k, v in self.pending.items()}
        target = self.ef.compensate(state) if self.ef else {k: v.detach().float() for k, v in state.items()}
        self.pending = target
        self.encoded = self.codec.encode(target)
        decoded = self.codec.decode(self.encoded)
        if self.ef:
            self.ef.record(target, decoded)
        return decoded

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"pending/{k}": v for k, v in self.pending.items()}
        if self.ef:
            out.update({f"residual/{k}": v for k, v in self.ef.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor], order: list[str]) -> dict[str, torch.Tensor]:
        """Restore a checkpoint's broadcast (re-encoded from what it encoded: the codec is
        deterministic) and residual; returns the global state clients hold. ``order`` is the wire
        order of the factors (safetensors sorts keys)."""
        pending = {k: state[f"pending/{k}"] for k in order}
        if self.ef:
            self.ef.load_state_dict({k: state[f"residual/{k}"] for k in order if f"residual/{k}" in state})
        self.pending = pending
        self.encoded = self.codec.encode(pending)
        return self.codec.decode(self.encoded)
