"""Where a client keeps its error-feedback residual between the rounds it is selected."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from safetensors.torch import load_file, save_file

EF_KEY = "fedkron-ef-residual"


class ResidualStore:
    """In memory (the node's Flower context) by default; with ``client-state-dir`` (set by the
    simulation) on disk, one safetensors file per partition and round, so a run that is killed and
    resumed reads exactly the residual of the last completed round it took part in.
    """

    def __init__(self, folder: str, partition_id: int, context: Context):
        self.folder = Path(folder) if folder else None
        self.pid, self.context = partition_id, context

    def _path(self, rnd: int) -> Path:
        return self.folder / f"partition-{self.pid}" / f"round-{rnd}.safetensors"

    def load(self, server_round: int) -> dict[str, torch.Tensor]:
        if self.folder is None:
            if EF_KEY not in self.context.state:
                return {}
            return {k: torch.from_numpy(v.numpy().copy()) for k, v in self.context.state[EF_KEY].items()}
        files = sorted((int(p.stem.split("-")[1]), p) for p in self._path(0).parent.glob("round-*.safetensors"))
        earlier = [p for r, p in files if r < server_round]
        return load_file(str(earlier[-1])) if earlier else {}

    def save(self, server_round: int, state: dict[str, torch.Tensor]) -> None:
        if self.folder is None:
            self.context.state[EF_KEY] = ArrayRecord(state)
            return
        path = self._path(server_round)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        os.replace(tmp, path)
        # keep this round's file and the newest before it (what a re-run of this round reads)
        files = sorted(path.parent.glob("round-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))
        for old in files[:-2]:
            old.unlink(missing_ok=True)
