"""Multiple choice scored by the LM with each question's shared prefix run once.

A question's choices are one sequence each (``fedkron.data.lm_encode.encode_mc_for_lm``); they share
the context's tokens, so the per-choice scorer runs that context once per choice. Here each
question's longest common token prefix runs once, and only the choices' own tokens run on its
keys/values; whole questions are batched (``batch_size`` sequences): one forward pass for their
prefixes (right padded), then one for all their choices' own tokens, each row on its question's
keys/values (``DynamicCache.batch_select_indices``) at explicit positions. The positions, the
masks and the log-probabilities read are the per-choice scorer's, so the sums are equal to float
precision on every prompt format (``tests/test_llm_task.py``).

Where the model's logits are its output layer applied to the last hidden states and nothing more
(:func:`split_head`), the vocabulary-wide output layer runs only at the positions whose next token
is scored, not at every position: SmolLM2-135M's output layer is 28 M of its 135 M weights.
"""

from __future__ import annotations

import torch
from torch import nn

# Model types whose logits are exactly ``lm_head(last hidden state)``: no soft-capping, no scale
# (Gemma 2's and Cohere's are not); any other model takes the full-logits path.
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "gpt2", "phi3", "smollm3", "olmo2"})


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(body, output layer) when ``model(...).logits`` is ``output_layer(body(...).last_hidden_state)``,
    so the output layer can run on chosen positions only; ``None`` for any other model."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_TYPES or getattr(config, "logit_scale", None):
        return None
    if getattr(config, "final_logit_softcapping", None) or not type(model).__name__.endswith(
        ("ForCausalLM", "LMHeadModel")
    ):
        return None
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(body, nn.Module) or body is model or not isinstance(head, nn.Module):
        return None
    return body, head


def selected_logits(model: nn.Module, select: torch.Tensor, **inputs) -> tuple[torch.Tensor, object]:
    """(logits of the positions where ``select`` (B, T) is True, flattened in row-major order; the
    forward's output, for its cache): the output layer runs on those positions only when it can."""
    split = split_head(model)
    if split is None:
        out = model(**inputs)
        return out.logits[select], out
    body, head = split
    out = body(**inputs)
    return head(out.last_hidden_state[select]), out


def picked_logprob_sums(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ log p(token | prefix) over the tokens where ``mask`` is True, one fp64 sum per row, from the
    logits of every position (``logits[:, t]`` predicts ``input_ids[:, t + 1]``). Only the masked
    positions go through log-softmax (vocabularies are ~50k wide)."""
    return _picked_sums(logits[:, :-1][mask[:, 1:]], input_ids, mask)


def _picked_sums(picked_logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The per-row sums from the logits of the positions ``t`` with ``mask[:, t + 1]``, row-major."""
    target_mask = mask[:, 1:]
    token_lp = picked_logits.float().log_softmax(-1)
    token_lp = token_lp.gather(-1, input_ids[:, 1:][target_mask].unsqueeze(-1)).squeeze(-1)
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


def _prefixes(ids: torch.Tensor, lengths: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """Each question's shared prefix length (``shared_prefix_length`` over its rows), one per question."""
    shared = [shared_prefix_length(ids[question == q], lengths[question == q]) for q in range(int(question.max()) + 1)]
    return torch.tensor(shared, device=ids.device)


def _run_heads(model: nn.Module, ids, attention, scored, question, shared):
    """The questions' prefixes, one right-padded row each: (the logits of the prefix positions that
    some row of the question scores, row-major; those positions (Q, H); the keys/values, one copy
    per choice row; the argument name of the cache; the prefixes' attention mask, one row per choice)."""
    width = int(shared.max())
    first = torch.stack([(question == q).nonzero()[0, 0] for q in range(len(shared))])
    head_mask = torch.arange(width, device=ids.device) < shared.unsqueeze(1)
    union = torch.stack([scored[question == q, :width].any(0) for q in range(len(shared))]) & head_mask
    logits, out = selected_logits(
        model, union, input_ids=ids[first, :width], attention_mask=attention[first, :width] * head_mask, use_cache=True
    )
    cache_arg = "cache" if "cache" in out else "past_key_values"  # transformers ≥ 5.2 names it `cache`
    cache = out[cache_arg]
    cache.batch_select_indices(question)
    return logits, union, cache, cache_arg, (attention[first, :width] * head_mask)[question]


def _chunk_sums(model: nn.Module, ids, attention, mask, question) -> torch.Tensor:
    """The summed continuation log-likelihoods of the rows of several whole questions (``question``:
    each row's question, 0..Q-1, ascending): every prefix once, in one batch, then every row's own
    tokens, in one batch, on the prefixes' keys/values (explicit positions: the prefixes are padded)."""
    lengths = attention.sum(1)
    scored = torch.zeros_like(mask)
    scored[:, :-1] = mask[:, 1:]  # the positions whose next token is scored
    shared = _prefixes(ids, lengths, question)
    if int(shared.min()) < 1:  # a question whose choices have nothing in common: run the rows whole
        logits, _ = selected_logits(model, scored, input_ids=ids, attention_mask=attention)
        return _picked_sums(logits, ids, mask)
    head_logits, union, cache, cache_arg, head_attention = _run_heads(model, ids, attention, scored, question, shared)
    own = shared[question]  # each row's prefix length
    positions = own.unsqueeze(1) + torch.arange(int((lengths - own).max()), device=ids.device)
    at = positions.clamp(max=ids.shape[1] - 1)
    tail_mask = attention.gather(1, at) * (positions < lengths.unsqueeze(1))
    tail_scored = scored.gather(1, at) & tail_mask.bool()
    tail_logits, _ = selected_logits(
        model,
        tail_scored,
        input_ids=ids.gather(1, at),
        attention_mask=torch.cat([head_attention, tail_mask], dim=1),
        position_ids=positions,
        use_cache=False,
        **{cache_arg: cache},
    )
    head_pieces = head_logits.split(union.sum(1).tolist())
    tail_pieces = tail_logits.split(tail_scored.sum(1).tolist())
    parts = []  # row-major, as _picked_sums reads them: each row's prefix positions, then its own
    for row, q in enumerate(question.tolist()):
        parts += [head_pieces[q][scored[row, : union.shape[1]][union[q]]], tail_pieces[row]]
    return _picked_sums(torch.cat(parts), ids, mask)


def question_chunks(rows: torch.Tensor, batch_size: int) -> list[tuple[int, int]]:
    """(begin, end) spans of whole questions (rows sorted by question), each at most ``batch_size``
    rows unless one question alone has more."""
    starts = (torch.cat([torch.tensor([True]), rows[1:] != rows[:-1]])).nonzero().flatten().tolist() + [len(rows)]
    spans, begin = [], 0
    for start, end in zip(starts[:-1], starts[1:]):
        if end - begin > batch_size and start > begin:
            spans.append((begin, start))
            begin = start
    return spans + [(begin, len(rows))] if len(rows) else spans


@torch.inference_mode()
def mc_loglikelihoods_shared(model: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 32) -> torch.Tensor:
    """Summed log-likelihood of each (row, choice) continuation, shape (M,), fp64: the per-choice
    scorer's figures, each question's shared prefix computed once, whole questions batched up to
    ``batch_size`` sequences (fewer, larger forward passes: on a busy CPU each pass pays its threads'
    start-up)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = encoded["row_index"]
    lls = torch.empty(len(rows), dtype=torch.float64)
    try:
        for begin, end in question_chunks(rows, batch_size):
            part = [encoded[k][begin:end] for k in ("input_ids", "attention_mask", "continuation_mask")]
            width = int(part[1].sum(1).max())
            question = torch.unique_consecutive(rows[begin:end], return_inverse=True)[1]
            part = [x[:, :width].to(device) for x in part]
            lls[begin:end] = _chunk_sums(model, *part, question.to(device)).cpu()
    finally:
        model.train(was_training)
    return lls
