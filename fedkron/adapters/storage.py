"""Adapter folders: save, and load only after everything was checked against the weights file.

A folder's config is validated and the factor shapes it implies (computed on the meta device,
no memory) are compared with the tensor shapes in the safetensors header (read without loading
a tensor) before anything is injected or allocated; a load that fails anyway leaves the model
exactly as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import AdapterConfig, AdapterConfigError
from .layers import base_layer_sizes
from .model import (
    STATE_ATTR,
    AdapterStateError,
    adapter_state_dict,
    build_layer,
    inject,
    injected,
    load_adapter_state_dict,
    restored_on_failure,
)
from .targets import select_modules_to_save, select_targets

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT = "fedkron-adapter"
FORMAT_VERSION = 1
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_ABS_WEIGHT = 1e6  # no trained adapter holds a larger value; 1e38 would overflow the first matmul


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


def read_json_object(config_file: Path, error: type[Exception] = AdapterConfigError) -> dict:
    if not config_file.is_file():
        raise FileNotFoundError(f"no {config_file.name} in {str(config_file.parent)!r}")
    try:
        meta = json.loads(config_file.read_text())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise error(f"{config_file} is not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise error(f"{config_file} must hold a JSON object, not {type(meta).__name__}")
    return meta


def read_adapter_meta(path: str | Path) -> dict:
    """The checked ``adapter_config.json`` of a fedkron folder; every bad field named."""
    config_file = Path(path) / CONFIG_NAME
    meta = read_json_object(config_file)
    if "peft_type" in meta:
        raise AdapterConfigError(f"{str(path)!r} holds a PEFT adapter; read it with import_peft(model, path)")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise AdapterConfigError(
            f"{config_file} is not a {FORMAT} v{FORMAT_VERSION} file "
            f"(format={meta.get('format')!r}, version={meta.get('format_version')!r})"
        )
    if not isinstance(meta.get("config"), dict):
        raise AdapterConfigError(
            f"{config_file}: field 'config' must be an AdapterConfig object, got {meta.get('config')!r}"
        )
    for key in ("targets", "modules_to_save"):
        value = meta.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise AdapterConfigError(f"{config_file}: field {key!r} must be a list of module names, got {value!r}")
    return meta


def weights_header(path: Path, error: type[Exception] = AdapterStateError) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from a safetensors header (checked against the file size by safetensors),
    without loading any tensor; only float tensors are accepted."""
    if not path.is_file():
        raise error(f"no {path.name} in {str(path.parent)!r}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {}
            for key in handle.keys():
                view = handle.get_slice(key)
                if view.get_dtype() not in FLOAT_DTYPES:
                    raise error(f"{path}: tensor {key!r} has dtype {view.get_dtype()}, expected one of {FLOAT_DTYPES}")
                header[key] = tuple(view.get_shape())
    except (SafetensorError, OSError) as err:
        raise error(f"{path} is not a readable safetensors file ({err})") from None
    return header


def planned_shapes(
    model: nn.Module, config: AdapterConfig, targets: list[str], modules_to_save: list[str]
) -> dict[str, tuple[int, ...]]:
    """The adapter state names and shapes ``inject(model, config)`` would create, built on the meta device."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in targets:
        d_out, d_in = base_layer_sizes(model.get_submodule(name))
        proxy = nn.Linear(d_in, d_out, bias=False, device="meta")
        layer = build_layer(name, proxy, config)
        shapes.update({f"{name}.{attr}": tuple(p.shape) for attr, p in layer.factors().items()})
    for name in modules_to_save:
        shapes.update({f"{name}.{n}": tuple(p.shape) for n, p in model.get_submodule(name).named_parameters()})
    return shapes


Shape = tuple[int, ...]


def shape_differences(expected: dict[str, Shape], found: dict[str, Shape]) -> tuple[list, list, list]:
    """(names missing from ``found``, names it has beyond ``expected``, (name, found shape, expected
    shape) where they differ): the one comparison of stored tensors against a model's."""
    missing = [n for n in expected if n not in found]
    extra = [n for n in found if n not in expected]
    wrong = [(n, tuple(found[n]), tuple(s)) for n, s in expected.items() if n in found and tuple(found[n]) != tuple(s)]
    return missing, extra, wrong


def check_shapes(expected: dict[str, Shape], found: dict[str, Shape], source: str) -> None:
    """Refuse ``found`` unless it has exactly the ``expected`` names and shapes; name the first differences."""
    missing, extra, wrong = shape_differences(expected, found)
    if missing or extra:
        raise AdapterStateError(
            f"{source} does not hold the model's adapter tensors: missing {len(missing)} {missing[:3]}, "
            f"unexpected {len(extra)} {extra[:3]}"
        )
    if wrong:
        name, shape, wanted = wrong[0]
        raise AdapterStateError(f"{source}: tensor {name!r} has shape {shape}, the model expects {wanted}")


def adapter_plan(model: nn.Module, config: AdapterConfig) -> tuple[list[str], list[str], dict[str, tuple[int, ...]]]:
    """(targets, modules_to_save, adapter state shapes) the model has, or would have after
    ``inject(model, config)``: computed without injecting or allocating anything."""
    current = getattr(model, STATE_ATTR, None)
    if current is not None:
        shapes = {k: tuple(v.shape) for k, v in adapter_state_dict(model).items()}
        return current.targets, current.modules_to_save, shapes
    targets = select_targets(model, config.target_modules)
    saved = select_modules_to_save(model, config.modules_to_save)
    return targets, saved, planned_shapes(model, config, targets, saved)


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a saved adapter; an un-injected model is injected first with the saved config.

    Every check (config fields, targets, tensor names and shapes from the file header) runs
    before anything is injected or loaded; on any failure the model is left as it was.
    """
    folder = Path(path)
    meta = read_adapter_meta(folder)
    try:
        config = AdapterConfig.from_dict(meta["config"])
    except AdapterConfigError as err:
        raise AdapterConfigError(f"{folder / CONFIG_NAME}: field 'config': {err}") from None
    weights = folder / WEIGHTS_NAME
    header = weights_header(weights)
    current = getattr(model, STATE_ATTR, None)
    if current is not None:
        ours, theirs = current.config.to_dict(), config.to_dict()
        diff = {k: (v, theirs[k]) for k, v in ours.items() if theirs[k] != v and k != "init_seed"}  # seed: start only
        if diff:
            raise AdapterStateError(f"model was injected with a different config than {str(path)!r}: {diff}")
    targets, saved, expected = adapter_plan(model, config)
    for kind, ours, theirs in (
        ("targets", targets, meta["targets"]),
        ("modules_to_save", saved, meta["modules_to_save"]),
    ):
        if ours != theirs:
            raise AdapterStateError(
                f"{kind} differ between model and {str(path)!r}: model only {sorted(set(ours) - set(theirs))[:3]}, "
                f"file only {sorted(set(theirs) - set(ours))[:3]}"
            )
    check_shapes(expected, header, str(weights))
    tensors = load_file(str(weights))
    check_values(tensors, str(weights))
    with restored_on_failure(model):
        if current is None:
            inject(model, config)
        load_adapter_state_dict(model, tensors)
    return model


def check_values(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Refuse NaN, ±inf and absurd magnitudes before anything is injected: loaded, they would turn
    every prediction into NaN (or train a federation from it) without any error."""
    for name, tensor in tensors.items():
        values = tensor.detach().float()
        if not bool(torch.isfinite(values).all()):
            raise AdapterStateError(f"{source}: tensor {name!r} holds non-finite values (NaN or inf)")
        peak = float(values.abs().max()) if values.numel() else 0.0
        if peak > MAX_ABS_WEIGHT:
            raise AdapterStateError(
                f"{source}: tensor {name!r} holds a value of magnitude {peak:.3g}, more than {MAX_ABS_WEIGHT:g}"
            )
