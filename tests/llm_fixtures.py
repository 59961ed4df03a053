"""Tiny decoder / seq2seq models and a byte-level BPE tokenizer for the LLM tests (no download)."""

from __future__ import annotations

import functools

import torch

CORPUS = [
    "Question: What is the capital of France?\nAnswer: Paris is the capital of France.",
    "The cat sat on the mat. The dog ran in the park. Birds fly south in winter.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "### Instruction:\nName a colour.\n\n### Input:\nsky\n\n### Response:\nblue",
    "yes no true false one two three four solution option answer ending café naïve",
] * 4
EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}" + EOS + "\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _trained():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def bpe_tokenizer(chat: bool = False):
    """A GPT-2-like byte-level BPE (spaces attach to the next word) with an eos but no pad token."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_trained()), eos_token=EOS)
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(vocab_size: int = 420, seed: int = 0):
    """initializer_range 0.2 (not 0.02): a frozen random lm_head that small caps every logit near 0.6,
    so no adapter could lower the loss much."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int = 420, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=vocab_size, n_positions=256, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(config).eval()


def tiny_t5(vocab_size: int = 420, seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def save_folder(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
