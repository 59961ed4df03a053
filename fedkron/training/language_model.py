"""Training and evaluation of causal LMs: masked-loss local steps, multiple choice scored by the LM
(lm-evaluation-harness's acc / acc_norm), held-out loss and perplexity, greedy samples, peak memory.

Tensors come from `fedkron.data.lm_encode` (right padded; ``labels`` = -100 off the answer).
"""

from __future__ import annotations

import math
import resource
import sys

import torch
import torch.nn.functional as F
from torch import nn

from fedkron.data.lm_encode import special_prefix
from fedkron.training.common import ProximalTerm, TrainResult, index_batches, local_optimizer
from fedkron.training.mc_scoring import mc_loglikelihoods_shared, picked_logprob_sums, selected_logits

TRAIN_KEYS = ("input_ids", "attention_mask", "labels")


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut a right-padded batch to its longest row (rows were padded to the whole set's longest)."""
    length = int(batch["attention_mask"].sum(1).max())
    return {k: v[:, :length] if v.ndim == 2 else v for k, v in batch.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def continuation_logprobs(model: nn.Module, input_ids, attention_mask, mask) -> torch.Tensor:
    """Σ log p(token | prefix) over the tokens where ``mask`` is True, one sum per row (fp64)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return picked_logprob_sums(logits, input_ids, mask)


@torch.no_grad()
def mc_loglikelihoods(model: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 16) -> torch.Tensor:
    """Summed log-likelihood of each (row, choice) continuation, shape (M,), fp64."""
    was_training = model.training
    model.eval()
    device = _device(model)
    total = len(encoded["input_ids"])
    lls = torch.empty(total, dtype=torch.float64)
    try:
        for start in range(0, total, batch_size):
            keys = ("input_ids", "attention_mask", "continuation_mask")
            batch = _trim({k: encoded[k][start : start + batch_size] for k in keys})
            batch = {k: v.to(device) for k, v in batch.items()}
            lls[start : start + len(batch["input_ids"])] = continuation_logprobs(
                model, batch["input_ids"], batch["attention_mask"], batch["continuation_mask"]
            ).cpu()
    finally:
        model.train(was_training)
    return lls


def mc_metrics(lls: torch.Tensor, encoded: dict[str, torch.Tensor]) -> dict[str, float]:
    """acc / acc_norm / acc_bytes / loss from per-choice log-likelihoods (see `score_mc`)."""
    rows, choices, gold = encoded["row_index"], encoded["choice_index"], encoded["gold"]
    is_gold = choices == gold[rows]
    tokens = encoded["continuation_mask"].sum(1)
    out = {"num_rows": len(gold), "loss": float(-lls[is_gold].sum() / tokens[is_gold].sum())}
    scores = {"acc": lls, "acc_norm": lls / encoded["choice_chars"], "acc_bytes": lls / encoded["choice_bytes"]}
    for name, score in scores.items():
        correct = [int(torch.argmax(score[rows == r])) == int(gold[r]) for r in range(len(gold))]
        out[name] = sum(correct) / len(gold)
    return out


def score_mc(
    model: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 16, shared_prefix: bool = True
) -> dict[str, float]:
    """Zero-shot multiple choice scored by the LM, as lm-evaluation-harness does.

    ``acc``: argmax of each choice's summed log-likelihood; ``acc_norm``: of that sum divided by the
    choice string's length in characters (lm-eval's ``acc_norm``); ``acc_bytes``: divided by its
    UTF-8 byte length (lm-eval's ``acc_bytes``); ``loss``: mean negative log-likelihood per token
    of the gold continuations (comparable to the training loss); ``num_rows``. Ties: first choice.

    ``shared_prefix`` (default): each question's common prefix runs once
    (:func:`fedkron.training.mc_scoring.mc_loglikelihoods_shared`, equal sums); otherwise every
    choice runs whole, ``batch_size`` sequences at a time.
    """
    if shared_prefix:
        return mc_metrics(mc_loglikelihoods_shared(model, encoded), encoded)
    return mc_metrics(mc_loglikelihoods(model, encoded, batch_size), encoded)


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Next-token cross entropy on the tokens whose label is not -100 (mean, or sum for pooling).

    The vocabulary-wide output layer runs only at the positions whose next token is a label, where
    the model allows it (:func:`fedkron.training.mc_scoring.split_head`): the same loss, less work."""
    labels = batch["labels"][:, 1:]
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = labels != -100
    logits, _ = selected_logits(model, keep, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.cross_entropy(logits.float(), labels[labels != -100], reduction=reduction)


def train_causal_lm(
    model: nn.Module,
    data: dict[str, torch.Tensor],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    optimizer: str = "adamw",
    max_grad_norm: float | None = None,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Local steps on the masked causal-LM loss (AdamW or SGD+momentum on the trainable tensors only),
    reshuffling each epoch like `fedkron.training.local.train_local`, plus FedProx's proximal term
    when ``proximal_mu`` > 0. Returns the mean loss over the steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train_causal_lm: the model has no trainable parameters (inject adapters first)")
    proximal = ProximalTerm(params, proximal_mu)
    opt = local_optimizer(params, optimizer, lr)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    device = _device(model)
    num_rows = int(data["input_ids"].shape[0])
    model.train()
    total = 0.0
    for idx in index_batches(num_rows, batch_size, steps, generator):
        batch = {k: v.to(device) for k, v in _trim({k: data[k][idx] for k in TRAIN_KEYS}).items()}
        loss = causal_lm_loss(model, batch) + proximal()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} (lr={lr} too high?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        total += loss.item()
    model.eval()
    return TrainResult(loss=total / max(steps, 1), num_examples=num_rows, steps=steps)


@torch.no_grad()
def eval_causal_lm(model: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 16) -> dict[str, float]:
    """Token-weighted mean loss over the response tokens of held-out rows, and its perplexity."""
    was_training = model.training
    model.eval()
    device = _device(model)
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(encoded["input_ids"]), batch_size):
        batch = _trim({k: encoded[k][start : start + batch_size] for k in TRAIN_KEYS})
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_sum += causal_lm_loss(model, batch, reduction="sum").item()
        tokens += int((batch["labels"][:, 1:] != -100).sum())
    model.train(was_training)
    loss = loss_sum / tokens if tokens else math.nan
    return {"loss": loss, "perplexity": math.exp(loss) if tokens else math.nan, "tokens": tokens}


@torch.no_grad()
def sample_generations(
    model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 8
) -> list[str]:
    """Greedy (deterministic) continuations of formatted prompts, without the prompt and special tokens.

    Batches are left-padded for generation; the tokenizer's padding side is restored afterwards."""

    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    prefix = special_prefix(tokenizer)
    out: list[str] = []
    try:
        tokenizer.padding_side = "left"
        for start in range(0, len(prompts), batch_size):
            texts = prompts[start : start + batch_size]
            ids = [prefix + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(_device(model))
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def peak_memory_bytes(device: str | torch.device = "cpu") -> int:
    """High-water mark of memory: the process's peak RSS on CPU (``getrusage``; never resets), the
    peak allocated by torch on a CUDA device (reset with ``torch.cuda.reset_peak_memory_stats``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
