"""Model builders: the one place a frozen base, its task head and the adapters are put together.

Client, server and tests all call :func:`build_model`, so the frozen base, the task head and the
initial adapter factors are constructed one way only (and identically everywhere for a seed).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn

from fedkron.adapters import AdapterConfig, inject
from fedkron.models.causal_lm import (
    enable_gradient_checkpointing,
    lm_adapter_config,
    load_causal_lm,
    prepare_tokenizer,
    resolve_model_source,
)
from fedkron.models.dual_encoder import DualEncoderForMultipleChoice
from fedkron.models.smollm2 import ALIASES
from fedkron.models.sources import minilm_path
from fedkron.runconfig.choices import METHOD_DEFAULTS
from fedkron.runconfig.fields import RunConfig

# The RunConfig fields build_model reads: a process that caches a built model keys it by these and
# by build_model's own arguments, the head's size (tests check that build_model reads nothing else).
MODEL_FIELDS = (
    "model",
    "task",
    "method",
    "rank",
    "alpha",
    "targets",
    "shape_policy",
    "seed",
    "mc_head",
    "base_quant",
    "device",
    "gradient_checkpointing",
)
ENCODER_ALIASES = ("minilm-l6", "tiny-bert")

# Model aliases that work offline. Anything else is a hub id or a local folder.
TINY_BERT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str):
    from transformers import AutoTokenizer  # here: transformers takes seconds to import

    if model in ENCODER_ALIASES:
        return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    if is_language_model(model):
        source = resolve_model_source(model)
        return prepare_tokenizer(AutoTokenizer.from_pretrained(source, local_files_only=os.path.isdir(source)))
    return AutoTokenizer.from_pretrained(model)


@functools.lru_cache(maxsize=16)
def is_language_model(model: str) -> bool:
    """A decoder-only model (Llama, Mistral, Qwen2, SmolLM, Phi, GPT-2 ...): tasks are scored by the
    LM and trained on the answer tokens. Encoders and T5 get a classification head instead."""

    if model in ALIASES:
        return True
    if model in ENCODER_ALIASES:
        return False
    from transformers import AutoConfig  # here: transformers takes seconds to import

    source = resolve_model_source(model)
    config = AutoConfig.from_pretrained(source, local_files_only=os.path.isdir(source))
    archs = config.architectures or []
    return not config.is_encoder_decoder and any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def resolved_device(cfg: RunConfig) -> str:
    """``cuda`` when asked for or (``auto``) present, else ``cpu``."""
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.device


def model_key(cfg: RunConfig, num_labels: int, multiple_choice: bool = False) -> tuple:
    """Everything that shapes the model ``build_model(cfg, num_labels, multiple_choice)`` returns: the
    fields it reads and its head's shape. The shape is not a field: ``--task custom`` derives it from
    the --train-file, so one process given two files (a warm worker serving two runs) needs two
    models even when every field but the file is the same."""
    return tuple(getattr(cfg, name) for name in MODEL_FIELDS) + (int(num_labels), bool(multiple_choice))


def adapter_config(cfg: RunConfig) -> AdapterConfig:
    targets = "all-linear" if cfg.targets == "all-linear" else [t.strip() for t in cfg.targets.split(",") if t.strip()]
    return AdapterConfig(
        method=cfg.method,
        rank=adapter_rank(cfg),
        alpha=cfg.alpha,
        shape_policy=cfg.shape_policy,
        target_modules=targets,
    )


def adapter_rank(cfg: RunConfig) -> int:
    """``cfg.rank``, or the method's default rank when the config is not resolved yet."""

    return cfg.rank or METHOD_DEFAULTS.get(cfg.method, METHOD_DEFAULTS["lora"])["rank"]


def build_model(cfg: RunConfig, num_labels: int, multiple_choice: bool = False) -> nn.Module:
    """Frozen base + task head + adapters, deterministic for ``cfg.seed``.

    ``minilm-l6`` is the pretrained MiniLM-L6 from its PyPI package; ``tiny-bert`` a random-init
    2-layer BERT for fast tests; anything else goes to ``from_pretrained`` (hub id or folder).
    Multiple choice with ``cfg.mc_head == "dual"`` wraps the bare encoder in
    `DualEncoderForMultipleChoice` (embedding similarity); "cross" is `AutoModelForMultipleChoice`.
    """
    from transformers import (  # here: transformers takes seconds to import
        AutoConfig,
        AutoModel,
        AutoModelForMultipleChoice,
        AutoModelForSequenceClassification,
    )
    from transformers.utils import logging as hf_logging  # here: transformers takes seconds to import

    hf_logging.disable_progress_bar()
    if os.environ.get("TRANSFORMERS_VERBOSITY", "error") == "error":
        hf_logging.set_verbosity_error()  # the "classifier newly initialized" report is expected
    if is_language_model(cfg.model):
        return build_language_model(cfg)
    dual = multiple_choice and cfg.mc_head == "dual"
    auto = AutoModel if dual else AutoModelForMultipleChoice if multiple_choice else AutoModelForSequenceClassification
    torch.manual_seed(cfg.seed)
    kwargs = {} if multiple_choice else {"num_labels": num_labels}
    if cfg.model == "tiny-bert":  # (from_config: no weights to read)
        config = AutoConfig.from_pretrained(minilm_path(), local_files_only=True, **TINY_BERT, **kwargs)
        model = auto.from_config(config)
    elif cfg.model == "minilm-l6":
        model = auto.from_pretrained(minilm_path(), local_files_only=True, use_safetensors=True, **kwargs)
    else:  # use_safetensors: a pickle checkpoint is refused, never unpickled
        model = auto.from_pretrained(cfg.model, use_safetensors=True, **kwargs)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if dual:
        model = DualEncoderForMultipleChoice(model)
    torch.manual_seed(cfg.seed + 1)  # adapter init independent of how many draws the head took
    inject(model, adapter_config(cfg))
    return model.to(resolved_device(cfg)).eval()  # from_config and the dual wrapper start in train mode


def build_language_model(cfg: RunConfig) -> nn.Module:
    """A frozen causal LM (4/8-bit with ``base_quant``) with adapters on its blocks' projections; no
    head is trained (the LM scores the answers)."""

    model, _ = load_causal_lm(
        cfg.model,
        base_quant=cfg.base_quant,
        device=resolved_device(cfg),
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
    torch.manual_seed(cfg.seed + 1)
    inject(
        model, lm_adapter_config(cfg.method, adapter_rank(cfg), cfg.alpha, cfg.targets, shape_policy=cfg.shape_policy)
    )
    return model.eval()
