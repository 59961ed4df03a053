"""Tokenise causal-LM data into right-padded tensors: multiple choice for scoring, masked training
sequences (loss on the answer / response only), instruction rows.

Context and continuation are split as lm-evaluation-harness does (``_encode_pair``): trailing
spaces of the context move to the continuation, the whole string and the context are tokenised,
and the continuation is the whole's tokens past the context's. An empty context is conditioned on
the BOS (else EOS) token. Too-long sequences lose tokens from the left of the context.
"""

from __future__ import annotations

import torch

from fedkron.data.lm_prompts import format_instruction, mc_requests

IGNORE = -100  # the label value torch's cross entropy (and transformers' LM loss) skips


class LMEncodeError(ValueError):
    """Bad arguments, or a sequence that cannot fit ``max_length``."""


def special_prefix(tokenizer) -> list[int]:
    """Token ids the tokenizer puts in front of a text by default (Llama's BOS; none for GPT-2,
    SmolLM2; BERT's [CLS]); suffixes it adds ([SEP]) are not used for causal LMs."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def _prefix_token(tokenizer) -> int:
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise LMEncodeError(f"tokenizer {tokenizer.name_or_path!r} has neither BOS nor EOS for an empty context")
    return token


def encode_pairs(
    tokenizer, contexts: list[str], continuations: list[str], move_spaces: bool = True
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per pair, split like lm-eval's ``_encode_pair``
    (``move_spaces=False`` keeps a prompt's trailing newline in the prompt, for instruction rows)."""
    prefix = special_prefix(tokenizer)
    moved = []
    for ctx, cont in zip(contexts, continuations, strict=True):
        spaces = len(ctx) - len(ctx.rstrip()) if move_spaces else 0
        moved.append((ctx[: len(ctx) - spaces], ctx[len(ctx) - spaces :] + cont))
    whole = tokenizer([c + t for c, t in moved], add_special_tokens=False)["input_ids"]
    heads = tokenizer([c for c, _ in moved], add_special_tokens=False)["input_ids"]
    out = []
    for (ctx, _), ids, head in zip(moved, whole, heads, strict=True):
        if not ctx:
            out.append(([_prefix_token(tokenizer)], list(ids)))
            continue
        bos = [] if prefix and tokenizer.bos_token and ctx.startswith(tokenizer.bos_token) else prefix
        out.append((bos + list(head), list(ids[len(head) :])))
    return out


def pack(pairs: list[tuple[list[int], list[int]]], max_length: int, pad_id: int, cut_continuation: bool):
    """Right-padded ``input_ids``, ``attention_mask`` and ``continuation_mask`` (True on continuation
    tokens). Too long: drop context tokens from the left (one is kept); a continuation that still does
    not fit is cut on its right when ``cut_continuation`` (training) and an error otherwise (scoring)."""
    if not isinstance(max_length, int) or max_length < 2:
        raise LMEncodeError(f"max_length must be an int >= 2, got {max_length!r}")
    rows = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            raise LMEncodeError(f"sequence {i}: the continuation is empty (nothing to score or train)")
        if len(cont) > max_length - 1:
            if not cut_continuation:
                raise LMEncodeError(
                    f"sequence {i}: the continuation alone has {len(cont)} tokens, "
                    f"max_length={max_length}; raise max_length"
                )
            cont = cont[: max_length - 1]
        keep = min(len(ctx), max_length - len(cont))
        rows.append((ctx[len(ctx) - keep :], cont))
    width = max(len(c) + len(t) for c, t in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    continuation = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (ctx, cont) in enumerate(rows):
        n = len(ctx) + len(cont)
        ids[i, :n] = torch.tensor(ctx + cont)
        attention[i, :n] = 1
        continuation[i, len(ctx) : n] = True
    return ids, attention, continuation


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is None:
        raise LMEncodeError(f"tokenizer {tokenizer.name_or_path!r} has no pad token; call prepare_tokenizer first")
    return tokenizer.pad_token_id


def encode_mc_for_lm(rows: list[dict], tokenizer, max_length: int, task: str | None = None) -> dict[str, torch.Tensor]:
    """One sequence per (row, choice), for `fedkron.training.language_model.score_mc`.

    Keys: ``input_ids``, ``attention_mask`` (M, L); ``continuation_mask`` (M, L) bool, True on the
    choice's continuation tokens; ``row_index``, ``choice_index`` (M,); ``choice_chars`` and
    ``choice_bytes`` (M,): length of the choice string (lm-eval's ``doc_to_choice``) in characters
    (``acc_norm``) and UTF-8 bytes (``acc_bytes``); ``gold`` (N,): each row's label. Rows may have
    different numbers of choices (ARC has 3-5). Sequences are at most ``max_length`` tokens unless a
    choice alone needs more (then the longest choice + 1).
    """
    if not rows:
        raise LMEncodeError("encode_mc_for_lm: no rows")
    contexts, continuations, meta = [], [], []
    for r, row in enumerate(rows):
        ctxs, conts, strings = mc_requests(row, task)
        if not 0 <= int(row["label"]) < len(strings):
            raise LMEncodeError(f"row {r}: label {row['label']!r} outside range({len(strings)})")
        contexts += ctxs
        continuations += conts
        meta += [(r, c, len(s), len(s.encode("utf-8"))) for c, s in enumerate(strings)]
    pairs = encode_pairs(tokenizer, contexts, continuations)
    # A choice longer than the window widens it (keeping one context token): a cut continuation would
    # score another answer. Contexts still lose their left end, as lm-evaluation-harness does at the
    # model's length. PIQA's solutions reach 124 SmolLM2 tokens against its 64-token default.
    window = max(max_length, max((len(cont) + 1 for _, cont in pairs), default=0))
    ids, attention, continuation = pack(pairs, window, _pad_id(tokenizer), cut_continuation=False)
    rows_idx, choice_idx, chars, nbytes = zip(*meta, strict=True)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "continuation_mask": continuation,
        "row_index": torch.tensor(rows_idx),
        "choice_index": torch.tensor(choice_idx),
        "choice_chars": torch.tensor(chars, dtype=torch.float64),
        "choice_bytes": torch.tensor(nbytes, dtype=torch.float64),
        "gold": torch.tensor([int(row["label"]) for row in rows]),
    }


def _training_tensors(pairs, tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    ids, attention, continuation = pack(pairs, max_length, _pad_id(tokenizer), cut_continuation=True)
    labels = ids.masked_fill(~continuation, IGNORE)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def encode_mc_for_training(
    rows: list[dict], tokenizer, max_length: int, task: str | None = None
) -> dict[str, torch.Tensor]:
    """The prompt + the gold choice only: ``input_ids``, ``attention_mask``, ``labels`` (N, L) with
    ``labels`` = -100 on prompt and padding tokens, so the causal-LM loss is the gold answer's."""
    if not rows:
        raise LMEncodeError("encode_mc_for_training: no rows")
    contexts, continuations = [], []
    for row in rows:
        ctxs, conts, _ = mc_requests(row, task)
        contexts.append(ctxs[int(row["label"])])
        continuations.append(conts[int(row["label"])])
    return _training_tensors(encode_pairs(tokenizer, contexts, continuations), tokenizer, max_length)


def encode_instructions(
    rows: list[dict], tokenizer, max_length: int, use_chat_template: bool | None = None
) -> dict[str, torch.Tensor]:
    """Instruction rows (Alpaca or chat ``messages``) formatted by `format_instruction`; loss on the
    response tokens only (``labels`` = -100 elsewhere). Long prompts lose their start; long
    responses their end."""
    if not rows:
        raise LMEncodeError("encode_instructions: no rows")
    formatted = [format_instruction(row, tokenizer, use_chat_template) for row in rows]
    pairs = encode_pairs(tokenizer, [p for p, _ in formatted], [r for _, r in formatted], move_spaces=False)
    return _training_tensors(pairs, tokenizer, max_length)
