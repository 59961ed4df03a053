"""Multiple choice scored by the LM with each question's shared prefix run once.

A question's choices are one sequence each (``fedkron.data.lm_encode.encode_mc_for_lm``); they share
the context's tokens, so the per-choice scorer runs that context once per choice. Here each
question's longest common token prefix runs once, its keys/values are repeated for the choices
(``DynamicCache.batch_repeat_interleave``), and only the suffixes run, batched. The positions, the
masks and the log-probabilities read are the per-choice scorer's, so the sums are equal to float
precision (``tests/test_llm_task.py``); on CPU the work falls with the share of tokens in the prefix.
"""

from __future__ import annotations

import torch
from torch import nn


def picked_logprob_sums(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ log p(token | prefix) over the tokens where ``mask`` is True, one fp64 sum per row, from the
    logits of every position (``logits[:, t]`` predicts ``input_ids[:, t + 1]``). Only the masked
    positions go through log-softmax (vocabularies are ~50k wide)."""
    target_mask = mask[:, 1:]
    picked = logits[:, :-1][target_mask].float().log_softmax(-1)
    token_lp = picked.gather(-1, input_ids[:, 1:][target_mask].unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(len(input_ids), device=input_ids.device).unsqueeze(1).expand_as(target_mask)[target_mask]
    sums = torch.zeros(len(input_ids), dtype=torch.float64, device=input_ids.device)
    return sums.index_add_(0, rows, token_lp.double())


def shared_prefix_length(input_ids: torch.Tensor, lengths: torch.Tensor) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own to run."""
    shortest = int(lengths.min())
    same = (input_ids[:, :shortest] == input_ids[:1, :shortest]).all(0)
    differs = (~same).nonzero()
    common = int(differs[0]) if len(differs) else shortest
    return min(common, shortest - 1)


def _question_sums(model: nn.Module, ids: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The summed continuation log-likelihoods of one question's choices (rows of ``ids``)."""
    lengths = attention.sum(1)
    width = int(lengths.max())
    ids, attention, mask = ids[:, :width], attention[:, :width], mask[:, :width]
    shared = shared_prefix_length(ids, lengths)
    if shared < 1:  # nothing in common: run the choices as they are
        return picked_logprob_sums(model(input_ids=ids, attention_mask=attention).logits, ids, mask)
    head = model(input_ids=ids[:1, :shared], attention_mask=attention[:1, :shared], use_cache=True)
    cache = head["cache"] if "cache" in head else head.past_key_values  # transformers ≥ 5.2 names it `cache`
    cache.batch_repeat_interleave(len(ids))
    cache_arg = "cache" if "cache" in head else "past_key_values"
    tail = model(input_ids=ids[:, shared:], attention_mask=attention, use_cache=False, **{cache_arg: cache})
    head_logits = head.logits.expand(len(ids), -1, -1)
    return picked_logprob_sums(torch.cat([head_logits, tail.logits], dim=1), ids, mask)


@torch.no_grad()
def mc_loglikelihoods_shared(model: nn.Module, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-likelihood of each (row, choice) continuation, shape (M,), fp64: the per-choice
    scorer's figures, each question's shared prefix computed once."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = encoded["row_index"]
    lls = torch.empty(len(rows), dtype=torch.float64)
    starts = torch.cat([torch.tensor([0]), (rows[1:] != rows[:-1]).nonzero().flatten() + 1, torch.tensor([len(rows)])])
    try:
        for begin, end in zip(starts[:-1].tolist(), starts[1:].tolist()):
            part = [encoded[k][begin:end].to(device) for k in ("input_ids", "attention_mask", "continuation_mask")]
            lls[begin:end] = _question_sums(model, *part).cpu()
    finally:
        model.train(was_training)
    return lls
