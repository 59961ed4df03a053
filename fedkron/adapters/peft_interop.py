"""PEFT interop: write an adapter as a PEFT LoKr / LoRA folder and read such folders back.

Mapping (PEFT 0.21, checked against ``PeftModel.from_pretrained`` logits in the tests):
LoKr ``lokr_w1`` = A, ``lokr_w2_a`` = B1, ``lokr_w2_b`` = B2 (or ``lokr_w2`` = B when PEFT picks a
full w2: ``r ≥ max(b_out, b_in) / 2``), scaling ``alpha / r`` on both sides. PEFT derives A's shape
from one global ``decompose_factor``, so only shapes PEFT's ``factorization`` would produce export
natively. ``format="lora"`` exports any method exactly as PEFT LoRA, using
``A⊗(B_l·B_r) = (A⊗B_l)·(I⊗B_r)`` (rank a_in·k) or ``(I⊗B_l)·(A⊗B_r)`` (rank a_out·k).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import AdapterConfig, AdapterConfigError
from .layers import AdapterLayer, KronLoRALayer, LoRALayer
from .model import (
    FULL_ROLE,
    STATE_ATTR,
    adapter_factor_roles,
    adapter_layers,
    adapter_state_dict,
    inject,
    injected,
    load_adapter_state_dict,
    restored_on_failure,
)
from .shapes import peft_shape
from .storage import CONFIG_NAME, WEIGHTS_NAME, adapter_plan, check_shapes, read_json_object, weights_header

PREFIX = "base_model.model."
LOKR_TENSORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


class PeftExportError(AdapterConfigError):
    """The adapter cannot be written (or read) in the requested PEFT format."""


def _lora_pair(layer: AdapterLayer) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(lora_B (d_out × k), lora_A (k × d_in), s) with ΔW = s · lora_B @ lora_A, exactly."""
    if isinstance(layer, LoRALayer):
        return layer.lora_B, layer.lora_A, layer.scaling
    a = layer.kron_A
    if isinstance(layer, KronLoRALayer):
        b_left, b_right = layer.kron_B1, layer.kron_B2
    else:
        b_out, b_in = layer.kron_B.shape
        eye = torch.eye(min(b_out, b_in), dtype=a.dtype, device=a.device)
        b_left, b_right = (eye, layer.kron_B) if b_out <= b_in else (layer.kron_B, eye)
    a_out, a_in = a.shape
    if a_in <= a_out:
        eye_in = torch.eye(a_in, dtype=a.dtype, device=a.device)
        return torch.kron(a, b_left), torch.kron(eye_in, b_right), layer.scaling
    eye_out = torch.eye(a_out, dtype=a.dtype, device=a.device)
    return torch.kron(eye_out, b_left), torch.kron(a, b_right), layer.scaling


def _peft_lokr_factor(layers: dict[str, AdapterLayer]) -> int:
    """A ``decompose_factor`` under which PEFT rebuilds every layer's shapes, or raise saying why."""
    shapes = {n: layer.shape for n, layer in layers.items()}
    candidates = [-1] + sorted({v for s in shapes.values() for v in (s.a_out, s.a_in, s.b_out, s.b_in)})
    for factor in candidates:
        if all(peft_shape(s.d_out, s.d_in, factor) == s for s in shapes.values()):
            return factor
    name, shape = next(iter(shapes.items()))
    raise PeftExportError(
        f"PEFT LoKr derives every A from one decompose_factor (A is f×f when f divides both sizes); "
        f"no factor reproduces these shapes (e.g. {name!r}: A {shape.a_out}×{shape.a_in}, "
        f"B {shape.b_out}×{shape.b_in}). Inject with shape_policy='peft', or export_peft(..., format='lora')"
    )


def _lokr_export(cfg: AdapterConfig, layers: dict[str, AdapterLayer]):
    from peft import LoKrConfig  # here: peft imports transformers (seconds)

    factor = _peft_lokr_factor(layers)
    if cfg.method == "krona":  # a rank that makes PEFT keep every w2 full; alpha keeps s
        rank = max(math.ceil(max(layer.kron_B.shape) / 2) for layer in layers.values())
    else:
        rank = cfg.rank
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{name}.lokr_w1"] = layer.kron_A
        if cfg.method == "krona":
            tensors[f"{name}.lokr_w2"] = layer.kron_B
        elif rank >= max(layer.shape.b_out, layer.shape.b_in) / 2:  # PEFT's own use_w2 rule
            tensors[f"{name}.lokr_w2"] = layer.kron_B1 @ layer.kron_B2
        else:
            tensors[f"{name}.lokr_w2_a"], tensors[f"{name}.lokr_w2_b"] = layer.kron_B1, layer.kron_B2
    config = LoKrConfig(r=rank, alpha=cfg.scaling * rank, decompose_factor=factor, decompose_both=False)
    return config, tensors


def _lora_export(layers: dict[str, AdapterLayer]):
    from peft import LoraConfig  # here: peft imports transformers (seconds)

    conv1d = {isinstance(layer.base_layer, Conv1D) for layer in layers.values()}
    if len(conv1d) > 1:
        raise PeftExportError("PEFT LoRA has one fan_in_fan_out flag: cannot mix nn.Linear and Conv1D targets")
    tensors, ranks, alphas = {}, {}, {}
    for name, layer in layers.items():
        up, down, scaling = _lora_pair(layer)
        tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = down, up
        ranks[name], alphas[name] = down.shape[0], scaling * down.shape[0]
    first = next(iter(layers))
    rank_pattern = {re.escape(n): r for n, r in ranks.items() if r != ranks[first]}
    alpha_pattern = {re.escape(n): a for n, a in alphas.items() if a != alphas[first]}
    config = LoraConfig(
        r=ranks[first], lora_alpha=alphas[first], rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        fan_in_fan_out=conv1d.pop(), lora_dropout=0.0,
    )  # fmt: skip
    return config, tensors


def export_peft(model: nn.Module, path: str | Path, format: str = "native") -> Path:
    """Write a PEFT adapter folder that ``peft.PeftModel.from_pretrained(base, path)`` loads.

    ``format="native"``: kron-lora/krona as LoKr, lora as LoRA. ``format="lora"``: any method as an
    exact PEFT LoRA (higher rank for Kronecker methods; works on Conv1D, which PEFT LoKr lacks).
    """
    state = injected(model)
    if format not in ("native", "lora"):
        raise PeftExportError(f"unknown export format {format!r}; expected 'native' or 'lora'")
    layers = adapter_layers(model)
    merged = [n for n, layer in layers.items() if layer.merged]
    if merged:
        raise PeftExportError(f"layer {merged[0]!r} is merged; unmerge before export_peft")
    if format == "lora" or state.config.method == "lora":
        config, tensors = _lora_export(layers)
    else:
        conv = [n for n, layer in layers.items() if isinstance(layer.base_layer, Conv1D)]
        if conv:
            raise PeftExportError(f"PEFT LoKr does not support transformers Conv1D ({conv[0]!r}); use format='lora'")
        config, tensors = _lokr_export(state.config, layers)
    config.target_modules = list(layers)
    config.modules_to_save = list(state.modules_to_save) or None
    config.base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    roles = adapter_factor_roles(model)
    tensors.update({n: t for n, t in adapter_state_dict(model).items() if roles[n] == FULL_ROLE})
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    out = {PREFIX + k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(out, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def _group(tensors: dict[str, torch.Tensor], suffixes: tuple[str, ...]):
    """Split PEFT keys into {module: {suffix: tensor}} for adapter tensors and {name: tensor} for the rest."""
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    rest: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        key = key.removeprefix(PREFIX)
        for suffix in suffixes:
            if key.endswith("." + suffix):
                adapters.setdefault(key[: -len(suffix) - 1], {})[suffix] = value
                break
        else:
            rest[key] = value
    return adapters, rest


def _split_rank(name: str, w2: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B1·B2 = w2 exactly when rank(w2) ≤ r (what export writes for PEFT's full-w2 layers);
    zero columns/rows pad B1/B2 to r when r exceeds w2's smaller side. Meta tensors: shapes only."""
    b_out, b_in = w2.shape
    if w2.is_meta:
        return torch.empty(b_out, rank, device="meta"), torch.empty(rank, b_in, device="meta")
    u, s, vh = torch.linalg.svd(w2.double(), full_matrices=False)
    b1, b2 = u[:, :rank] * s[:rank], vh[:rank]
    err = (b1 @ b2 - w2.double()).norm() / w2.double().norm().clamp_min(1e-30)
    if s[rank:].numel() and err > 1e-6:
        raise PeftExportError(f"{name}.lokr_w2 {tuple(w2.shape)} has rank above r={rank}; cannot import as kron-lora")
    pad = rank - b1.shape[1]
    b1 = torch.nn.functional.pad(b1, (0, pad))
    b2 = torch.nn.functional.pad(b2, (0, 0, 0, pad))
    return b1.to(w2.dtype), b2.to(w2.dtype)


def _number(meta: dict, key: str, positive_int: bool = False) -> float:
    """A PEFT config field, checked: present, a finite number (a positive int for ranks)."""
    value = meta.get(key)
    if positive_int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise PeftExportError(f"{CONFIG_NAME}: field {key!r} must be a positive int, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PeftExportError(f"{CONFIG_NAME}: field {key!r} must be a finite number, got {value!r}")
    return float(value)


def _lokr_import(meta: dict, adapters: dict[str, dict[str, torch.Tensor]], method: str | None):
    if meta.get("decompose_both") or any("lokr_w1_a" in t or "lokr_t2" in t for t in adapters.values()):
        raise PeftExportError("LoKr adapters with a decomposed w1 or a conv t2 have no fedkron equivalent")
    rank, alpha = int(_number(meta, "r", positive_int=True)), _number(meta, "alpha")
    incomplete = [
        n
        for n, t in adapters.items()
        if "lokr_w1" not in t or ("lokr_w2" not in t and {"lokr_w2_a", "lokr_w2_b"} - set(t))
    ]
    if incomplete:
        raise PeftExportError(
            f"LoKr module {incomplete[0]!r} lacks lokr_w1 or its w2 factors (has {sorted(adapters[incomplete[0]])})"
        )
    all_full = all("lokr_w2" in t for t in adapters.values())
    method = method or ("krona" if all_full else "kron-lora")
    if method == "krona" and not all_full:
        raise PeftExportError("this LoKr adapter has low-rank w2 factors; it imports as 'kron-lora', not 'krona'")
    state = {}
    for name, t in adapters.items():
        state[f"{name}.kron_A"] = t["lokr_w1"]
        if method == "krona":
            state[f"{name}.kron_B"] = t["lokr_w2"]
        elif "lokr_w2" in t:
            state[f"{name}.kron_B1"], state[f"{name}.kron_B2"] = _split_rank(name, t["lokr_w2"], rank)
        else:
            state[f"{name}.kron_B1"], state[f"{name}.kron_B2"] = t["lokr_w2_a"], t["lokr_w2_b"]
    shapes = {name: tuple(t["lokr_w1"].shape) for name, t in adapters.items()}
    return dict(method=method, rank=rank, alpha=alpha, factor_shapes=shapes), state


def _lora_import(meta: dict, adapters: dict[str, dict[str, torch.Tensor]], method: str | None):
    if method not in (None, "lora"):
        raise PeftExportError(f"a PEFT LoRA adapter imports only as 'lora', not {method!r}")
    if meta.get("use_dora") or meta.get("rank_pattern") or meta.get("alpha_pattern"):
        raise PeftExportError("PEFT LoRA adapters with DoRA or per-layer rank/alpha patterns are not supported")
    rank, alpha = int(_number(meta, "r", positive_int=True)), _number(meta, "lora_alpha")
    if meta.get("use_rslora"):
        alpha = alpha * rank / math.sqrt(rank)  # same s = alpha / sqrt(r) under fedkron's s = alpha / r
    incomplete = [n for n, t in adapters.items() if set(t) != {"lora_A.weight", "lora_B.weight"}]
    if incomplete:
        raise PeftExportError(
            f"LoRA module {incomplete[0]!r} lacks lora_A or lora_B (has {sorted(adapters[incomplete[0]])})"
        )
    state = {}
    for name, t in adapters.items():
        state[f"{name}.lora_A"], state[f"{name}.lora_B"] = t["lora_A.weight"], t["lora_B.weight"]
    return dict(method="lora", rank=rank, alpha=alpha), state


def import_peft(model: nn.Module, path: str | Path, method: str | None = None) -> nn.Module:
    """Read a PEFT LoKr/LoRA folder into ``model`` (injecting it first when it has no adapters).

    A LoKr folder whose every w2 is full could be KronA or Kron-LoRA (PEFT keeps w2 full when
    ``r ≥ max(b_out, b_in)/2``): ``method`` decides, defaulting to the model's injected method,
    else ``"krona"``. Kron-LoRA splits each full w2 into B1·B2 exactly (raises if its rank > r).
    The whole import is first run on the weights file's header (meta tensors, no memory) and
    checked against the model; on any failure the model is left as it was.
    """
    current = getattr(model, STATE_ATTR, None)
    method = method or (current.config.method if current is not None else None)
    folder = Path(path)
    meta = read_json_object(folder / CONFIG_NAME, PeftExportError)
    kind = meta.get("peft_type")
    if kind not in ("LOKR", "LORA"):
        raise PeftExportError(f"{str(folder)!r}: peft_type {kind!r} is not LOKR or LORA")
    weights = folder / WEIGHTS_NAME
    header = weights_header(weights, PeftExportError)
    shapes_only = {k: torch.empty(shape, device="meta") for k, shape in header.items()}
    config, planned = _plan_import(meta, kind, shapes_only, method, folder)
    if current is not None and (current.config.method, current.config.scaling) != (config.method, config.scaling):
        raise PeftExportError(
            f"model has {current.config.method!r} adapters with scaling {current.config.scaling:g}, "
            f"{str(folder)!r} holds {config.method!r} with scaling {config.scaling:g}"
        )
    check_shapes(adapter_plan(model, config)[2], {k: tuple(v.shape) for k, v in planned.items()}, str(weights))
    _, state = _plan_import(meta, kind, load_file(str(weights)), method, folder)
    with restored_on_failure(model):
        if current is None:
            inject(model, config)
        load_adapter_state_dict(model, state)
    return model


def _plan_import(meta: dict, kind: str, tensors: dict[str, torch.Tensor], method: str | None, folder: Path):
    """(AdapterConfig, fedkron adapter state incl. modules_to_save) for PEFT ``tensors``."""
    suffixes = LOKR_TENSORS if kind == "LOKR" else ("lora_A.weight", "lora_B.weight")
    adapters, rest = _group(tensors, suffixes)
    if not adapters:
        raise PeftExportError(f"{str(folder)!r} holds no {kind} adapter tensors")
    fields, state = (_lokr_import if kind == "LOKR" else _lora_import)(meta, adapters, method)
    saved = sorted({name.rpartition(".")[0] for name in rest})
    try:
        config = AdapterConfig(target_modules=list(adapters), modules_to_save=saved, **fields)
    except AdapterConfigError as err:
        raise PeftExportError(f"{folder / CONFIG_NAME}: {err}") from None
    return config, {**state, **rest}
