"""Which modules of a model get adapters and which are trained in full (name matching rules)."""

from __future__ import annotations

import re

from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import AdapterConfigError

ALL_LINEAR = "all-linear"
AUTO = "auto"
HEAD_NAMES = ("classifier", "pre_classifier", "score", "qa_outputs", "classification_head")  # the last: T5


class TargetError(AdapterConfigError):
    """A target or modules_to_save pattern selects nothing, or something that cannot be adapted."""


def is_adaptable(module: nn.Module) -> bool:
    """nn.Linear (bitsandbytes Linear4bit/8bitLt subclass it) or transformers' GPT-2 Conv1D."""
    return isinstance(module, (nn.Linear, Conv1D))


def matches_suffix(name: str, key: str) -> bool:
    return name == key or name.endswith("." + key)


def _matches(name: str, pattern: str | list[str]) -> bool:
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(matches_suffix(name, key) for key in pattern)


def _block_prefixes(model: nn.Module) -> list[str]:
    """Names of the ModuleLists that hold the model's repeated (transformer) blocks."""
    return [
        name + "."
        for name, module in model.named_modules()
        if name and isinstance(module, nn.ModuleList) and any(is_adaptable(m) for m in module.modules())
    ]


def _is_head(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in HEAD_NAMES


def _output_embedding_names(model: nn.Module) -> set[str]:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return {name for name, m in model.named_modules() if head is not None and m is head}


def _all_linear(model: nn.Module) -> list[str]:
    excluded = _output_embedding_names(model)
    linear = [n for n, m in model.named_modules() if is_adaptable(m) and n not in excluded and not _is_head(n)]
    prefixes = _block_prefixes(model)
    if not prefixes:  # no repeated blocks (a plain MLP): every linear layer but the head
        return linear
    return [n for n in linear if any(n.startswith(p) for p in prefixes)]


def select_targets(model: nn.Module, target_modules: str | list[str]) -> list[str]:
    """Names of the layers to adapt, in model order; every list entry must hit an adaptable layer."""
    if target_modules == ALL_LINEAR:
        names = _all_linear(model)
        if not names:
            raise TargetError(f"target_modules='all-linear' found no nn.Linear/Conv1D in {type(model).__name__}")
        return names
    modules = dict(model.named_modules())
    # a str is one regex; a list is many suffixes, each checked on its own
    patterns = [target_modules] if isinstance(target_modules, str) else [[key] for key in target_modules]
    for pattern in patterns:
        hits = [n for n in modules if n and _matches(n, pattern)]
        shown = pattern if isinstance(pattern, str) else pattern[0]
        if not hits:
            raise TargetError(f"target pattern {shown!r} matches no module of {type(model).__name__}")
        if not any(is_adaptable(modules[n]) for n in hits):
            kinds = sorted({type(modules[n]).__name__ for n in hits})
            raise TargetError(
                f"target pattern {shown!r} matches only {kinds} (e.g. {hits[0]!r}); "
                "only nn.Linear and transformers Conv1D can be adapted"
            )
    return [n for n, m in modules.items() if n and is_adaptable(m) and _matches(n, target_modules)]


def select_modules_to_save(model: nn.Module, spec: str | list[str] | None) -> list[str]:
    """Names of modules trained in full; nested hits collapse to the outermost module."""
    if not spec:
        return []
    names = [n for n, _ in model.named_modules() if n]
    if spec == AUTO:
        hits = [n for n in names if _is_head(n)]
    else:
        keys = [spec] if isinstance(spec, str) else list(spec)
        for key in keys:
            if not any(matches_suffix(n, key) for n in names):
                raise TargetError(f"modules_to_save entry {key!r} matches no module of {type(model).__name__}")
        hits = [n for n in names if any(matches_suffix(n, key) for key in keys)]
    return [n for n in hits if not any(n.startswith(outer + ".") for outer in hits)]
