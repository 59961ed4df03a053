"""Causal-LM train/eval helpers: LM-scored multiple choice against a hand computation, the masked loss,
a training step, perplexity, greedy samples."""

import math

import pytest
import torch
from llm_fixtures import bpe_tokenizer, tiny_gpt2, tiny_llama
from torch import nn

from fedkron.adapters import adapter_state_dict, inject
from fedkron.data.lm_encode import encode_instructions, encode_mc_for_lm, encode_mc_for_training
from fedkron.models.causal_lm import lm_adapter_config, prepare_tokenizer
from fedkron.training.language_model import (
    causal_lm_loss,
    eval_causal_lm,
    mc_loglikelihoods,
    mc_metrics,
    sample_generations,
    score_mc,
    train_causal_lm,
)
from fedkron.training.mc_scoring import (
    mc_loglikelihoods_shared,
    question_chunks,
    shared_prefix_length,
    split_head,
)

ROWS = [
    {"context": "What is the capital of France?", "choices": ["Paris", "London café"], "label": 0},
    {"context": "Name a colour", "choices": ["blue", "red", "green"], "label": 2},
    {"context": "", "choices": ["The cat sat on the mat.", "Birds fly"], "label": 1},
]


@pytest.fixture
def tok():
    return prepare_tokenizer(bpe_tokenizer())


def hand_loglikelihood(model, tok, context: str, continuation: str, with_count: bool = False):
    """Plain forward on the unpadded sequence, log-softmax, sum over the continuation tokens."""
    ctx = tok(context, add_special_tokens=False)["input_ids"] if context else [tok.eos_token_id]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx) :] if context else whole
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].double().log_softmax(-1)
    total = sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont))
    return (total, len(cont)) if with_count else total


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_mc_loglikelihoods_equal_a_hand_computation(build, tok):
    model = build(len(tok))
    enc = encode_mc_for_lm(ROWS, tok, 64, task="piqa")
    lls = mc_loglikelihoods(model, enc, batch_size=3)  # batches mix lengths: padding must not leak in
    expected = [
        hand_loglikelihood(model, tok, f"Question: {r['context']}\nAnswer:", " " + c)
        for r in ROWS
        for c in r["choices"]
    ]
    torch.testing.assert_close(lls, torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-4)
    scores = score_mc(model, enc, batch_size=2)
    gold_ll = [expected[0], expected[4], expected[6]]
    gold_tokens = enc["continuation_mask"].sum(1)[[0, 4, 6]].sum()
    assert scores["loss"] == pytest.approx(-sum(gold_ll) / float(gold_tokens), rel=1e-5)
    by_row = [expected[0:2], expected[2:5], expected[5:7]]
    acc = sum(max(range(len(v)), key=v.__getitem__) == r["label"] for v, r in zip(by_row, ROWS, strict=True)) / 3
    assert scores["acc"] == pytest.approx(acc) and scores["num_rows"] == 3


SHARED_ROWS = ROWS + [
    {"context": "Pick one", "choices": ["the cat", "the cat sat", "the"], "label": 1},  # choices share tokens too
    {"context": "A long context " * 6, "choices": ["x", "yz"], "label": 0},
]
BOOLQ_ROWS = [
    {"context": "is the sky blue", "passage": "The sky is blue on a clear day.", "label": 1},
    {"context": "do birds fly south", "passage": "Birds fly south in winter.", "choices": ["no", "yes"], "label": 0},
]
WINOGRANDE_ROWS = [  # partial scoring: the contexts differ; in the second, one choice starts inside the
    # prefix the choices share ("Pick a" + " b c" and "Pick a b" + " b c")
    {"sentence": "The cat sat on _ mat.", "options": ["the", "a"], "label": 0},
    {"sentence": "Pick _ b c", "options": ["a", "a b"], "label": 1},
]
TASK_ROWS = {"boolq": BOOLQ_ROWS, "winogrande": WINOGRANDE_ROWS}


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("task", ["piqa", "arc-easy", "hellaswag", "openbookqa", "boolq", "winogrande"])
def test_the_shared_prefix_scorer_equals_the_per_choice_scorer(build, task, tok):
    """Each question's common prefix run once (its keys/values repeated for the choices, the output
    layer run only where a next token is scored) gives the per-choice sums (full logits) to 1e-4,
    so acc / acc_norm / acc_bytes are identical, on every prompt format."""
    model = build(len(tok))
    enc = encode_mc_for_lm(TASK_ROWS.get(task, SHARED_ROWS), tok, 64, task=task)
    plain = mc_loglikelihoods(model, enc, batch_size=4)
    for batch_size in (32, 3):  # all questions in one batch; one question (or two) a batch
        shared = mc_loglikelihoods_shared(model, enc, batch_size=batch_size)
        torch.testing.assert_close(shared, plain, rtol=0, atol=1e-4)
    fast, slow = score_mc(model, enc), score_mc(model, enc, shared_prefix=False)
    assert fast.pop("loss") == pytest.approx(slow.pop("loss"), abs=1e-5)
    assert fast == slow  # acc, acc_norm, acc_bytes, num_rows


def test_a_choice_may_start_inside_the_shared_prefix(tok):
    """The winogrande rows above do reach that case: the prefix the choices share holds a token one
    choice scores (so the prefix's positions are scored per row, not once for all)."""
    enc = encode_mc_for_lm(WINOGRANDE_ROWS[1:], tok, 64, task="winogrande")
    shared = shared_prefix_length(enc["input_ids"], enc["attention_mask"].sum(1))
    starts = enc["continuation_mask"].int().argmax(1)
    assert int(starts.min()) < shared <= int(starts.max()), (starts, shared)


def test_questions_are_batched_whole():
    rows = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3])
    assert question_chunks(rows, 5) == [(0, 5), (5, 10), (10, 11)]
    assert question_chunks(rows, 2) == [(0, 3), (3, 5), (5, 10), (10, 11)]  # a question is never split
    assert question_chunks(rows, 100) == [(0, 11)]


def test_only_plain_output_layers_are_split_off():
    """The output layer runs on the scored positions only where logits = lm_head(last hidden state)."""
    llama = tiny_llama()
    body, head = split_head(llama)
    assert body is llama.model and head is llama.lm_head
    assert split_head(tiny_gpt2())[1] is not None
    llama.config.final_logit_softcapping = 30.0  # Gemma 2 style: logits are not the plain projection
    assert split_head(llama) is None
    assert split_head(nn.Linear(2, 2)) is None


def test_the_shared_prefix_leaves_every_choice_a_token_of_its_own():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 0], [5, 6, 9, 9]])
    assert shared_prefix_length(ids, torch.tensor([4, 3, 4])) == 2  # rows differ at position 2
    assert shared_prefix_length(ids[:2], torch.tensor([4, 3])) == 2  # row 1 ends at 3: one token kept
    assert shared_prefix_length(ids[:1], torch.tensor([4])) == 3


def test_acc_norm_divides_by_characters_and_acc_bytes_by_utf8_bytes():
    # choices "ab" (2 chars, 2 bytes), "éé" (2 chars, 4 bytes), "abcd" (4 chars, 4 bytes)
    encoded = {
        "row_index": torch.tensor([0, 0, 0]),
        "choice_index": torch.tensor([0, 1, 2]),
        "gold": torch.tensor([2]),
        "choice_chars": torch.tensor([2.0, 2.0, 4.0], dtype=torch.float64),
        "choice_bytes": torch.tensor([2.0, 4.0, 4.0], dtype=torch.float64),
        "continuation_mask": torch.tensor([[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool),
    }
    lls = torch.tensor([-2.0, -1.8, -3.0], dtype=torch.float64)  # per char -1, -0.9, -0.75; byte -1, -0.45, -0.75
    out = mc_metrics(lls, encoded)
    assert (out["acc"], out["acc_norm"], out["acc_bytes"]) == (0.0, 1.0, 0.0)
    assert out["loss"] == pytest.approx(3.0 / 3)
    out = mc_metrics(lls, dict(encoded, gold=torch.tensor([1])))
    assert (out["acc"], out["acc_norm"], out["acc_bytes"]) == (1.0, 0.0, 1.0)


def test_masked_loss_is_the_answer_tokens_mean_nll(tok):
    model = tiny_llama(len(tok))
    enc = encode_mc_for_training(ROWS, tok, 64, task="piqa")
    loss = causal_lm_loss(model, enc)
    hf = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=enc["labels"]).loss
    torch.testing.assert_close(loss, hf)
    pairs = [(f"Question: {r['context']}\nAnswer:", " " + r["choices"][r["label"]]) for r in ROWS]
    nll_and_tokens = [hand_loglikelihood(model, tok, ctx, cont, with_count=True) for ctx, cont in pairs]
    nll = -sum(ll for ll, _ in nll_and_tokens)
    assert loss.item() == pytest.approx(nll / sum(n for _, n in nll_and_tokens), rel=1e-4)


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_the_answer_only_loss_equals_the_full_logits_loss(build, tok):
    """The output layer runs on the answer positions only (one row each), and the loss and the
    adapters' gradients are the full-logits ones."""
    model = inject(build(len(tok)), lm_adapter_config("lora", rank=4, alpha=8.0, init_seed=0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # ΔW ≠ 0, so the gradients reach every adapter factor
    enc = encode_mc_for_training(ROWS, tok, 64, task="piqa")
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    loss = causal_lm_loss(model, enc)
    hook.remove()
    assert seen == [int((enc["labels"][:, 1:] != -100).sum())]
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1]
    labels = enc["labels"][:, 1:]
    full = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    full_grads = torch.autograd.grad(full, [p for p in model.parameters() if p.requires_grad])
    assert abs(loss.item() - full.item()) < 1e-5
    for got, want in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["kron-lora", "lora"])
def test_training_on_a_repeated_example_lowers_its_masked_loss(method, tok):
    model = inject(tiny_llama(len(tok)), lm_adapter_config(method, rank=4, alpha=8.0, init_seed=0))
    data = encode_instructions([{"instruction": "Name a colour.", "input": "sky", "output": "blue"}] * 4, tok, 128)
    base = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = eval_causal_lm(model, data)["loss"]
    result = train_causal_lm(model, data, steps=15, batch_size=2, lr=1e-2, seed=0)
    after = eval_causal_lm(model, data)["loss"]
    assert after < 0.5 * before and result.steps == 15 and result.num_examples == 4
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)  # base frozen
    assert any(v.abs().sum() > 0 for n, v in adapter_state_dict(model).items() if "B1" in n or "lora_B" in n)


def test_fedprox_keeps_a_language_models_adapters_near_the_global_ones(tok):
    """--strategy fedprox on a language model: train_local hands proximal_mu on to the causal-LM loop
    (it once dropped it, so FedProx was FedAvg there), whose term pulls the adapters back towards
    the values they started the round with."""
    from fedkron.training.local import train_local

    data = encode_instructions([{"instruction": "Name a colour.", "input": "sky", "output": "blue"}] * 4, tok, 128)
    moved = {}
    for mu in (0.0, 100.0):
        model = inject(tiny_llama(len(tok)), lm_adapter_config("lora", rank=4, alpha=8.0, init_seed=0))
        start = {k: v.clone() for k, v in adapter_state_dict(model).items()}
        train_local(model, data, steps=10, batch_size=2, lr=1e-2, seed=0, proximal_mu=mu)
        moved[mu] = float(sum((v - start[k]).pow(2).sum() for k, v in adapter_state_dict(model).items()).sqrt())
    assert 0 < moved[100.0] < 0.5 * moved[0.0], moved


def test_eval_perplexity_is_token_weighted_and_batch_size_free(tok):
    model = tiny_gpt2(len(tok))
    rows = [
        {"instruction": "Say hi", "output": "hi"},
        {"instruction": "Name a colour.", "input": "sky", "output": "blue green red"},
    ]
    data = encode_instructions(rows, tok, 128)
    one, two = eval_causal_lm(model, data, batch_size=1), eval_causal_lm(model, data, batch_size=2)
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5) and one["perplexity"] == pytest.approx(
        math.exp(one["loss"])
    )
    assert one["tokens"] == int((data["labels"][:, 1:] != -100).sum())
    per_row = [eval_causal_lm(model, {k: v[i : i + 1] for k, v in data.items()}) for i in range(2)]
    weighted = sum(r["loss"] * r["tokens"] for r in per_row) / sum(r["tokens"] for r in per_row)
    assert one["loss"] == pytest.approx(weighted, rel=1e-5)


def test_greedy_samples_are_deterministic_and_match_an_argmax_loop(tok):
    model = tiny_llama(len(tok), seed=3)
    model.generation_config.eos_token_id = None  # random weights: do not stop early
    prompts = ["Question: What is the capital of France?\nAnswer:", "The cat"]
    tok.padding_side = "right"
    batch = sample_generations(model, tok, prompts, max_new_tokens=5)
    assert tok.padding_side == "right"
    assert batch == sample_generations(model, tok, prompts, max_new_tokens=5, batch_size=1)
    ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert batch[0] == tok.decode(ids[-5:], skip_special_tokens=True)
