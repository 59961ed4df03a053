"""What a client does with one training message: decode global → local steps → encode update.

The frozen base model is built once per process and cached (keyed by everything that shapes it);
each call only swaps adapter factors in. Error feedback state lives in the node's Flower context
as plain tensors (an ArrayRecord), never pickled.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedkron.adapters import adapter_factor_roles, adapter_state_dict, load_adapter_state_dict
from fedkron.compression import ErrorFeedback, decode, from_records, get_codec, to_records
from fedkron.config import RunConfig
from fedkron.strategies.exactness import FROZEN_DIGEST_KEY, exact_names, frozen_digest
from fedkron.strategies.validation import ARRAYS_KEY, CONFIG_KEY, MANIFEST_KEY, METRICS_KEY
from fedkron.models import build_model
from fedkron.task import client_train_data, train_local

log = logging.getLogger("fedkron")
EF_KEY = "fedkron-ef-residual"

_MODELS: dict[tuple, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}


def cached_model(cfg: RunConfig, num_labels: int, multiple_choice: bool
                 ) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The frozen base + adapters for this config, built once per process, and the adapter state
    as built from ``cfg.seed`` (the same on the server and every client)."""
    key = (cfg.model, cfg.task, cfg.method, cfg.rank, cfg.alpha, cfg.shape_policy, cfg.seed)
    if key not in _MODELS:
        _MODELS.clear()  # one model per process: a new config replaces the old one
        model = build_model(cfg, num_labels, multiple_choice)
        init = {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}
        _MODELS[key] = (model, init)
    return _MODELS[key]


def full_global_state(cfg: RunConfig, received: dict[str, torch.Tensor], init: dict[str, torch.Tensor],
                      digest: str | None = None) -> dict[str, torch.Tensor]:
    """The whole adapter state from a broadcast. In ``exact`` mode the server sends only B1 and
    full modules (A and B2 never leave their seeded init, so sending them would be wasted
    downlink); they are taken from this process's own seeded build, checked against the
    server's fingerprint of them."""
    if cfg.aggregation != "exact":
        return received
    mine = frozen_digest(init, list(received))
    if digest != mine:
        raise ValueError(f"exact mode: this client's seeded A/B2 (digest {mine}) differ from the server's "
                         f"({digest}); server and clients must build adapters with the same seed, "
                         "model and library versions")
    return {**{k: v for k, v in init.items() if k not in received}, **received}


def select_trainable(model: torch.nn.Module, cfg: RunConfig) -> list[str]:
    """Set which adapter tensors train this round and return their names (what the client sends).

    Per-factor modes train every factor; ``exact`` freezes Kron-LoRA's A and B2 at their shared
    seeded init so the server's average of B1 is the average of the clients' ΔW.
    """
    roles = adapter_factor_roles(model)
    names = exact_names(roles) if cfg.aggregation == "exact" else list(roles)
    keep = set(names)
    params = dict(model.named_parameters())
    for name in roles:
        params[name].requires_grad_(name in keep)
    return names


def node_partition(context: Context, cfg: RunConfig) -> tuple[int, int]:
    """(partition id, number of partitions) from the node config (set by the simulation or the
    SuperNode's ``--node-config``)."""
    nc = context.node_config
    if "partition-id" not in nc or "num-partitions" not in nc:
        raise KeyError(
            "this SuperNode has no partition: start it with "
            "--node-config \"partition-id=<i> num-partitions=<n>\""
        )
    pid, num = int(nc["partition-id"]), int(nc["num-partitions"])
    if not 0 <= pid < num:
        raise ValueError(f"partition-id {pid} is outside [0, num-partitions={num})")
    return pid, num


def run_config_from(msg: Message, context: Context) -> RunConfig:
    """The run config the server broadcast; a node's own ``data-dir`` takes precedence."""
    values = {k: v for k, v in dict(msg.content[CONFIG_KEY]).items() if k not in ("server-round", FROZEN_DIGEST_KEY)}
    if context.node_config.get("data-dir"):
        values["data-dir"] = str(context.node_config["data-dir"])
    return RunConfig.from_mapping(values)


class ResidualStore:
    """Where a client keeps its error-feedback residual between the rounds it is selected.

    In memory (the node's Flower context) by default; with ``client-state-dir`` (set by the
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


def handle_train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    cfg = run_config_from(msg, context)
    server_round = int(msg.content[CONFIG_KEY]["server-round"])
    pid, num_parts = node_partition(context, cfg)
    data, task = client_train_data(cfg, pid, num_parts)
    model, seeded_init = cached_model(cfg, task.num_labels, task.kind == "multiple_choice")

    # Decode the broadcast (never unpickled: packed buffers + JSON manifest).
    encoded = from_records(msg.content[ARRAYS_KEY], msg.content[MANIFEST_KEY])
    global_state = full_global_state(cfg, decode(encoded), seeded_init, msg.content[CONFIG_KEY].get(FROZEN_DIGEST_KEY))
    sent_names = select_trainable(model, cfg)
    load_adapter_state_dict(model, global_state)

    t_train = time.perf_counter()
    result = train_local(model, data, cfg.local_steps, cfg.batch_size, cfg.lr,
                         seed=cfg.seed * 1_000_003 + server_round * 1009 + pid,
                         local_loss=cfg.local_loss, optimizer=cfg.local_opt)
    train_seconds = time.perf_counter() - t_train

    local = adapter_state_dict(model)
    update = {k: local[k].detach().float() - global_state[k].float() for k in sent_names}
    codec = get_codec(cfg.quant, **cfg.codec_options())
    if cfg.error_feedback:
        store = ResidualStore(cfg.client_state_dir, pid, context)
        ef = ErrorFeedback()
        ef.load_state_dict(store.load(server_round))
        up, _ = ef.step(update, codec)
        store.save(server_round, ef.state_dict())
    else:
        up = codec.encode(update)
    arrays, manifest = to_records(up)
    metrics = MetricRecord({
        "num-examples": result.num_examples,
        "train-loss": result.loss,
        "partition-id": pid,
        "train-seconds": train_seconds,
        "client-seconds": time.perf_counter() - t0,
    })
    return Message(RecordDict({ARRAYS_KEY: arrays, MANIFEST_KEY: manifest, METRICS_KEY: metrics}), reply_to=msg)


def handle_query(msg: Message, context: Context) -> Message:
    nc = context.node_config
    pid = int(nc.get("partition-id", -1))
    return Message(RecordDict({"info": MetricRecord({"partition-id": pid})}), reply_to=msg)
