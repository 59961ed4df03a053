"""Local training and evaluation: steps on a client's partition, scoring on held-out rows.

The model comes from :mod:`fedkron.models`, the tensors from :mod:`fedkron.data.client_data`. Encoders
(classification and multiple-choice heads) run here; a language model's tensors (answer-only
labels, choices to score) go to :mod:`fedkron.training.language_model`. Both loops share
:mod:`fedkron.training.common` (batches, optimizer, FedProx's proximal term).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedkron.data.encode import CONTEXT
from fedkron.training.common import ProximalTerm, TrainResult, index_batches, local_optimizer
from fedkron.training.language_model import eval_causal_lm, score_mc, train_causal_lm


def _forward(model: nn.Module, data: dict[str, torch.Tensor], idx: torch.Tensor):
    """Run one batch, cut to its longest row: padding to the partition's longest row would
    multiply the cost of short-sentence batches (SST-2 rows average ~13 tokens). The dual layout's
    context tensors (``context_*``) are cut to their own longest row."""
    device = next(model.parameters()).device
    inputs = {k: v[idx].to(device) for k, v in data.items()}
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
    proximal_mu: float = 0.0,
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

    ``proximal_mu`` > 0 adds FedProx's proximal term (μ/2)·‖w − w_start‖² over the trained tensors,
    with w_start the global values they held before the first step.
    """
    if is_lm_data(data):
        return train_causal_lm(model, data, steps, batch_size, lr, seed, optimizer=optimizer, proximal_mu=proximal_mu)
    params = [p for p in model.parameters() if p.requires_grad]
    proximal = ProximalTerm(params, proximal_mu)
    log_prior = label_log_prior(data, model) if local_loss == "logit-adjusted" else None
    opt = local_optimizer(params, optimizer, lr)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global RNG: same (round, client) → same run
    num_rows = int(data["labels"].shape[0])
    model.train()
    total = 0.0
    for idx in index_batches(num_rows, batch_size, steps, generator):
        out = _forward(model, data, idx)
        if log_prior is None:
            loss = out.loss
        else:
            loss = torch.nn.functional.cross_entropy(
                out.logits + log_prior.to(out.logits.device), data["labels"][idx].to(out.logits.device)
            )
        loss = loss + proximal()
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


def is_lm_data(data: dict[str, torch.Tensor]) -> bool:
    """A language model's tensors: per-token labels, or choices to score."""
    return "continuation_mask" in data or (
        "labels" in data
        and data["labels"].ndim == 2
        and "input_ids" in data
        and data["labels"].shape == data["input_ids"].shape
    )


def evaluate_metrics(model: nn.Module, data: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """``loss`` and ``accuracy`` (None for instruction data), plus ``acc_norm`` (multiple choice scored
    by a language model) or ``perplexity`` (instruction data)."""
    if "continuation_mask" in data:
        scores = score_mc(model, data)
        return {"loss": scores["loss"], "accuracy": scores["acc"], "acc_norm": scores["acc_norm"]}
    if is_lm_data(data):
        scores = eval_causal_lm(model, data)
        return {"loss": scores["loss"], "accuracy": None, "perplexity": scores["perplexity"]}
    loss, acc = evaluate(model, data)
    return {"loss": loss, "accuracy": acc}


def num_rows(data: dict[str, torch.Tensor]) -> int:
    """Rows (questions, sentences, instructions) in encoded tensors."""
    return int(data["gold"].shape[0] if "gold" in data else data["labels"].shape[0])


@torch.no_grad()
def evaluate(model: nn.Module, data: dict[str, torch.Tensor], batch_size: int = 64) -> tuple[float, float]:
    """(mean loss, accuracy) of an encoder's head over every row of ``data``."""
    model.eval()
    num_rows = int(data["labels"].shape[0])
    if num_rows == 0:
        return math.nan, math.nan
    loss_sum, correct = 0.0, 0
    for start in range(0, num_rows, batch_size):
        idx = torch.arange(start, min(start + batch_size, num_rows))
        out = _forward(model, data, idx)
        loss_sum += out.loss.item() * len(idx)
        correct += int((out.logits.argmax(-1).cpu() == data["labels"][idx]).sum())
    return loss_sum / num_rows, correct / num_rows
