"""What a client does with one message: decode the global adapter, then train and send back an
encoded update, or score it on the node's own held-out data, or say which partition it holds.

The frozen base model is built once per process and cached (keyed by every setting that shapes
it); each call only swaps adapter factors in. Messages are read and written by
:mod:`fedkron.protocol` alone.
"""

from __future__ import annotations

import logging
import time

import torch
from flwr.app import Context, Message

from fedkron.adapters import adapter_factor_roles, adapter_state_dict, load_adapter_state_dict
from fedkron.client.state import ResidualStore
from fedkron.compression import ErrorFeedback, get_codec
from fedkron.data.client_data import client_data, model_shape
from fedkron.models import build_model, model_key, resolved_device
from fedkron.protocol import (
    NUM_EXAMPLES,
    PARTITION_ID,
    PEAK_MEMORY,
    TRAIN_LOSS,
    Broadcast,
    frozen_digest,
    make_eval_reply,
    make_info,
    make_reply,
    read_broadcast,
    sent_names,
)
from fedkron.runconfig.fields import RunConfig
from fedkron.training.language_model import peak_memory_bytes
from fedkron.training.local import evaluate_metrics, num_rows, train_local

log = logging.getLogger("fedkron")
DEFAULTS = RunConfig().to_record()

_MODELS: dict[tuple, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}


def cached_model(cfg: RunConfig) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The frozen base + adapters for this config, built once per process, and the adapter state
    as built from ``cfg.seed`` (the same on the server and every client)."""
    shape = model_shape(cfg)  # `custom`: the label count of --train-file, not a field
    key = model_key(cfg, *shape)
    if key not in _MODELS:
        _MODELS.clear()  # one model per process: a new config replaces the old one
        model = build_model(cfg, *shape)
        init = {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}
        _MODELS[key] = (model, init)
    return _MODELS[key]


def full_global_state(
    cfg: RunConfig, received: dict[str, torch.Tensor], init: dict[str, torch.Tensor], digest: str | None = None
) -> dict[str, torch.Tensor]:
    """The whole adapter state from a broadcast. In ``exact`` mode the server sends only the
    output-side factors and full modules (the others never leave their seeded init, so sending
    them would be wasted downlink); the rest comes from this process's own seeded build, checked
    against the server's fingerprint of it. Every other mode (``alternating`` too) receives it all."""
    if cfg.aggregation != "exact":
        return received
    mine = frozen_digest(init, list(received))
    if digest != mine:
        raise ValueError(
            f"exact mode: this client's seeded frozen factors (digest {mine}) differ from the "
            f"server's ({digest}); server and clients must build adapters with the same seed, "
            "model and library versions"
        )
    return {**{k: v for k, v in init.items() if k not in received}, **received}


def select_trainable(model: torch.nn.Module, cfg: RunConfig, server_round: int | None = None) -> list[str]:
    """Set which adapter tensors train this round and return their names (what the client sends)."""
    roles = adapter_factor_roles(model)
    names = sent_names(roles, cfg.aggregation, server_round)
    keep = set(names)
    params = dict(model.named_parameters())
    for name in roles:
        params[name].requires_grad_(name in keep)
    return names


def encode_update(cfg: RunConfig, update: dict[str, torch.Tensor], store: ResidualStore, server_round: int):
    """The uplink payload of ``update``, with error feedback when on. Residuals are per name: those
    of factors not sent this round (``alternating``) are kept as they are for their next turn."""
    codec = get_codec(cfg.uplink, **cfg.codec_options(cfg.uplink))
    if not cfg.error_feedback:
        return codec.encode(update)
    held = store.load(server_round)
    ef = ErrorFeedback()
    ef.load_state_dict({k: v for k, v in held.items() if k in update})
    encoded, _ = ef.step(update, codec)
    store.save(server_round, {**{k: v for k, v in held.items() if k not in update}, **ef.state_dict()})
    return encoded


def node_partition(context: Context) -> tuple[int, int]:
    """(partition id, number of partitions) from the node config (set by the simulation or the
    SuperNode's ``--node-config``). A node started with only its own ``data-dir`` trains on all of
    it: partition 0 of 1."""
    nc = context.node_config
    if "partition-id" not in nc and "num-partitions" not in nc:
        if nc.get("data-dir"):
            return 0, 1
        raise KeyError(
            'this SuperNode has no data: start it with --node-config "data-dir=<folder>" '
            '(its own data) or "partition-id=<i> num-partitions=<n>" (a share of a common set)'
        )
    try:
        pid, num = int(nc["partition-id"]), int(nc["num-partitions"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"the node config needs both partition-id and num-partitions as integers (got {dict(nc)})"
        ) from None
    if not 0 <= pid < num:
        raise ValueError(f"partition-id {pid} is outside [0, num-partitions={num})")
    return pid, num


def _setup(msg: Message, context: Context) -> tuple[RunConfig, Broadcast, int, int]:
    """The run config the server broadcast (a node's own ``data-dir`` takes precedence), the
    decoded broadcast and this node's partition."""
    broadcast = read_broadcast(msg.content, DEFAULTS)
    values = dict(broadcast.config)
    if context.node_config.get("data-dir"):
        values["data-dir"] = str(context.node_config["data-dir"])
    pid, num = node_partition(context)
    return RunConfig.from_mapping(values), broadcast, pid, num


def local_update(local: dict, global_state: dict, sent) -> dict[str, torch.Tensor]:
    """What this client trained: local − global of each sent factor, in fp32 on the CPU, whatever
    device the model trained on (the codecs and the residual store work on CPU tensors; a client
    on a GPU failed every round here before both sides were moved to the CPU)."""
    return {k: local[k].detach().float().cpu() - global_state[k].float().cpu() for k in sent}


def handle_train(msg: Message, context: Context) -> Message:
    t0 = time.perf_counter()
    cfg, broadcast, pid, num_parts = _setup(msg, context)
    data = client_data(cfg, pid, num_parts)
    model, seeded_init = cached_model(cfg)
    global_state = full_global_state(cfg, broadcast.state, seeded_init, broadcast.frozen_digest)
    sent = select_trainable(model, cfg, broadcast.server_round)
    load_adapter_state_dict(model, global_state)

    t_train = time.perf_counter()
    result = train_local(
        model,
        data,
        cfg.local_steps,
        cfg.batch_size,
        broadcast.round_lr or cfg.lr,
        seed=cfg.seed * 1_000_003 + broadcast.server_round * 1009 + pid,
        local_loss=cfg.local_loss,
        optimizer=cfg.local_opt,
        proximal_mu=cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
    )
    train_seconds = time.perf_counter() - t_train

    update = local_update(adapter_state_dict(model), global_state, sent)
    encoded = encode_update(cfg, update, ResidualStore(cfg.client_state_dir, pid, context), broadcast.server_round)
    metrics = {
        NUM_EXAMPLES: result.num_examples,
        TRAIN_LOSS: result.loss,
        PARTITION_ID: pid,
        "train-seconds": train_seconds,
        "client-seconds": time.perf_counter() - t0,
        PEAK_MEMORY: peak_memory_bytes(resolved_device(cfg)),
    }
    return Message(make_reply(encoded, metrics), reply_to=msg)


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Score the global adapter on this node's own held-out data (federated evaluation)."""
    cfg, broadcast, pid, num_parts = _setup(msg, context)
    data = client_data(cfg, pid, num_parts, split="test")
    model, seeded_init = cached_model(cfg)
    load_adapter_state_dict(model, full_global_state(cfg, broadcast.state, seeded_init, broadcast.frozen_digest))
    scores = evaluate_metrics(model, data)
    return Message(make_eval_reply(num_rows(data), scores["loss"], scores["accuracy"]), reply_to=msg)


def handle_query(msg: Message, context: Context) -> Message:
    return Message(make_info(*node_partition(context)), reply_to=msg)
