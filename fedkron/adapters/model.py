"""Whole-model operations: inject adapters, name what a client trains and sends, merge, save, load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import AdapterConfig, AdapterConfigError
from .layers import AdapterLayer, KronALayer, KronLoRALayer, LoRALayer, base_layer_sizes
from .shapes import kron_shape
from .targets import TargetError, matches_suffix, select_modules_to_save, select_targets

STATE_ATTR = "_fedkron_adapter"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "fedkron-adapter"
FORMAT_VERSION = 1
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


def _build_layer(name: str, base: nn.Module, config: AdapterConfig) -> AdapterLayer:
    if config.method == "lora":
        return LoRALayer(base, config.rank, config.alpha, config.dropout)
    d_out, d_in = base_layer_sizes(base)
    shape = kron_shape(name, d_out, d_in, config)
    cls = KronLoRALayer if config.method == "kron-lora" else KronALayer
    return cls(base, shape, config.rank, config.alpha, config.dropout)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
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
    layers = {name: _build_layer(name, model.get_submodule(name), config) for name in targets}
    generator = None if config.init_seed is None else torch.Generator().manual_seed(config.init_seed)
    for param in model.parameters():
        param.requires_grad_(False)
    for name, layer in layers.items():
        layer.reset_factors(config.init, generator)
        _replace(model, name, layer)
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
    for name, layer in adapter_layers(model).items():
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


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` into folder ``path``."""
    state = injected(model)
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(model).items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "fedkron": FORMAT})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": state.config.to_dict(),
        "targets": state.targets,
        "modules_to_save": state.modules_to_save,
    }
    (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def read_adapter_meta(path: str | Path) -> dict:
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {str(path)!r}")
    meta = json.loads(config_file.read_text())
    if "peft_type" in meta:
        raise AdapterConfigError(f"{str(path)!r} holds a PEFT adapter; read it with import_peft(model, path)")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise AdapterConfigError(
            f"{config_file} is not a {FORMAT} v{FORMAT_VERSION} file "
            f"(format={meta.get('format')!r}, version={meta.get('format_version')!r})"
        )
    return meta


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a saved adapter; an un-injected model is injected first with the saved config."""
    meta = read_adapter_meta(path)
    config = AdapterConfig.from_dict(meta["config"])
    if getattr(model, STATE_ATTR, None) is None:
        inject(model, config)
    state = injected(model)
    ours, theirs = state.config.to_dict(), config.to_dict()
    diff = {k: (v, theirs[k]) for k, v in ours.items() if theirs[k] != v and k != "init_seed"}  # seed: start only
    if diff:
        raise AdapterStateError(f"model was injected with a different config than {str(path)!r}: {diff}")
    for kind, saved in (("targets", meta["targets"]), ("modules_to_save", meta["modules_to_save"])):
        if getattr(state, kind) != saved:
            only_model = sorted(set(getattr(state, kind)) - set(saved))[:3]
            only_file = sorted(set(saved) - set(getattr(state, kind)))[:3]
            raise AdapterStateError(
                f"{kind} differ between model and {str(path)!r}: model only {only_model}, file only {only_file}"
            )
    load_adapter_state_dict(model, load_file(str(Path(path) / WEIGHTS_NAME)))
    return model
