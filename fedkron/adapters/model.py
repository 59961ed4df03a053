"""Whole-model operations: inject adapters, name what a client trains and sends, merge (see .storage for files)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .config import AdapterConfig
from .layers import AdapterLayer, KronALayer, KronLoRALayer, LoRALayer, base_layer_sizes
from .shapes import kron_shape
from .targets import TargetError, matches_suffix, select_modules_to_save, select_targets

STATE_ATTR = "_fedkron_adapter"
FULL_ROLE = "full"


class AdapterStateError(KeyError, ValueError):
    """A model/adapter-state mismatch: not injected, injected twice, missing/extra/misshaped tensors."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclass
class InjectedAdapter:
    """What ``inject`` did, kept on the model: the config and the resolved module names."""

    config: AdapterConfig
    targets: list[str]
    modules_to_save: list[str]


def build_layer(name: str, base: nn.Module, config: AdapterConfig) -> AdapterLayer:
    if config.method == "lora":
        return LoRALayer(base, config.rank, config.alpha, config.dropout)
    d_out, d_in = base_layer_sizes(base)
    shape = kron_shape(name, d_out, d_in, config)
    cls = KronLoRALayer if config.method == "kron-lora" else KronALayer
    return cls(base, shape, config.rank, config.alpha, config.dropout)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def injected(model: nn.Module) -> InjectedAdapter:
    """The adapter record of an injected model (raises if ``inject`` was never called on it)."""
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise AdapterStateError(f"{type(model).__name__} has no fedkron adapters; call inject(model, config) first")
    return state


def inject(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Wrap the target layers in adapter layers (in place), freeze everything else, return the model.

    All layers are built before any is swapped in, so a bad layer leaves the model untouched.
    """
    if not isinstance(config, AdapterConfig):
        raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
    existing = [n for n, m in model.named_modules() if isinstance(m, AdapterLayer)]
    if getattr(model, STATE_ATTR, None) is not None or existing:
        where = f" (e.g. {existing[0]!r})" if existing else ""
        raise AdapterStateError(f"{type(model).__name__} already has adapters{where}; inject only once")
    targets = select_targets(model, config.target_modules)
    saved = select_modules_to_save(model, config.modules_to_save)
    for name in targets:
        inside = [s for s in saved if name == s or name.startswith(s + ".")]
        if inside:
            raise TargetError(f"layer {name!r} is both an adapter target and inside modules_to_save {inside[0]!r}")
    for key in config.factor_shapes:
        if not any(matches_suffix(n, key) for n in targets):
            raise TargetError(f"factor_shapes key {key!r} matches no adapted layer")
    layers = {name: build_layer(name, model.get_submodule(name), config) for name in targets}
    generator = None if config.init_seed is None else torch.Generator().manual_seed(config.init_seed)
    for param in model.parameters():
        param.requires_grad_(False)
    for name, layer in layers.items():
        layer.reset_factors(config.init, generator)
        replace_module(model, name, layer)
    setattr(model, STATE_ATTR, InjectedAdapter(config, targets, saved))
    for _, param in _trainable(model):
        param.requires_grad_(True)
    return model


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Module name → adapter layer, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    state = injected(model)
    wanted: dict[int, str] = {}
    for layer in adapter_layers(model).values():
        wanted.update({id(p): layer.roles[attr] for attr, p in layer.factors().items()})
    for name in state.modules_to_save:
        wanted.update({id(p): FULL_ROLE for p in model.get_submodule(name).parameters()})
    return [(n, p) for n, p in model.named_parameters() if id(p) in wanted]


def adapter_factor_roles(model: nn.Module) -> dict[str, str]:
    """State name → role (``A``/``B1``/``B2``/``B``/``lora_A``/``lora_B``, or ``full`` for modules_to_save)."""
    roles: dict[int, str] = {}
    for layer in adapter_layers(model).values():
        roles.update({id(p): layer.roles[attr] for attr, p in layer.factors().items()})
    return {n: roles.get(id(p), FULL_ROLE) for n, p in _trainable(model)}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Exactly what a client trains and sends (factors + modules_to_save), by parameter name, in model order.

    Defined by structure, not by ``requires_grad``: freezing some factors (exact averaging) keeps
    the names stable. Values are detached views like ``state_dict()``; clone to keep a snapshot.
    """
    return {name: param.detach() for name, param in _trainable(model)}


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for _, p in _trainable(model))


def _describe(names: list[str], shapes: dict[str, torch.Size]) -> str:
    listed = ", ".join(f"{n} {tuple(shapes[n])}" for n in names[:5])
    return listed + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the adapter tensors; strict: any missing, extra or misshaped tensor raises."""
    params = dict(_trainable(model))
    merged = [n for n, layer in adapter_layers(model).items() if layer.merged]
    if merged:
        raise AdapterStateError(f"cannot load adapter state into merged layers (e.g. {merged[0]!r}); unmerge first")
    missing = [n for n in params if n not in state]
    extra = [n for n in state if n not in params]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_describe(missing, {n: p.shape for n, p in params.items()})}")
        if extra:
            parts.append(f"unexpected {len(extra)}: {_describe(extra, {n: state[n].shape for n in extra})}")
        raise AdapterStateError("adapter state does not match the model's adapter tensors; " + "; ".join(parts))
    for name, param in params.items():
        if tuple(state[name].shape) != tuple(param.shape):
            module = name.rpartition(".")[0]
            raise AdapterStateError(
                f"tensor {name!r} (module {module!r}) has shape {tuple(state[name].shape)}, "
                f"the model expects {tuple(param.shape)}"
            )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def _switch_merged(model: nn.Module, merge_now: bool) -> nn.Module:
    injected(model)
    layers = adapter_layers(model)
    wrong = [n for n, layer in layers.items() if layer.merged == merge_now]
    if wrong:
        raise AdapterStateError(f"layer {wrong[0]!r} is {'already' if merge_now else 'not'} merged")
    for layer in layers.values():  # all-or-nothing: a quantized base raises before anything changes
        layer.weight_for_merge()
    for layer in layers.values():
        layer.merge() if merge_now else layer.unmerge()
    return model


def merge(model: nn.Module) -> nn.Module:
    """Fold every ΔW into its base weight (W ← W + ΔW); the adapter term is then skipped."""
    return _switch_merged(model, True)


def unmerge(model: nn.Module) -> nn.Module:
    """Undo ``merge`` (W ← W − ΔW), restoring the structured adapter forward."""
    return _switch_merged(model, False)


def remove_adapters(model: nn.Module, keep: frozenset[str] = frozenset()) -> None:
    """Undo ``inject``: put back the base layer of every adapter layer not named in ``keep``, drop the record."""
    for name, layer in adapter_layers(model).items():
        if name not in keep:
            replace_module(model, name, layer.base_layer)
    if getattr(model, STATE_ATTR, None) is not None:
        delattr(model, STATE_ATTR)


@contextmanager
def restored_on_failure(model: nn.Module):
    """On any exception inside, leave ``model`` as it was: adapters injected inside the block are
    removed and every parameter's ``requires_grad`` is put back (a failed load never half-adapts)."""
    had_record = getattr(model, STATE_ATTR, None) is not None
    layers_before = frozenset(adapter_layers(model))
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        yield model
    except BaseException:
        if not had_record:
            remove_adapters(model, keep=layers_before)
        for name, param in model.named_parameters():
            if name in flags:
                param.requires_grad_(flags[name])
        raise
