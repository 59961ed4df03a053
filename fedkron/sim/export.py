"""``fedkron export``: a finished run's global adapter as a PEFT folder, a fedkron folder or a merged model.

The run's model is rebuilt from its ``config.json`` (:func:`fedkron.models.build_model`, the same
call the server evaluates with) and given the final adapter (``adapter/``) or, with ``--round N``,
the one ``--save-every`` kept (``adapters/round-NNN.safetensors``). ``--precision`` stores the
factors (not the task head, kept fp32) at fp32 / bf16 / fp16, or quantized with the project's
codecs (int8, nf4, fp4): a fedkron folder then holds the codes and scales
(``adapter_quantized.safetensors``, the codec manifest in its metadata) and
:func:`load_exported` dequantizes them; a PEFT folder holds the dequantized values (fp32, so they
equal the codec's round trip exactly). Every refusal comes before any work; the folder is written
beside ``--out`` and renamed into place, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from fedkron.adapters import (
    PeftExportError,
    adapter_factor_roles,
    adapter_state_dict,
    export_peft,
    load_adapter,
    load_adapter_state_dict,
    merge,
    save_adapter,
)
from fedkron.adapters.model import FULL_ROLE, remove_adapters
from fedkron.adapters.storage import CONFIG_NAME, WEIGHTS_NAME
from fedkron.compression import Encoded, get_codec
from fedkron.compression.manifest import read_layout
from fedkron.durable import atomic_write, fsync_dir
from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.server.checkpoint import kept_rounds, round_adapter_path

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "nf4", "fp4")
FLOAT_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = ("peft", "fedkron")
QUANTIZED_NAME = "adapter_quantized.safetensors"
QUANTIZED_FORMAT = "fedkron-adapter-quantized"
CODES, SCALES = "__codes__", "__scales__"  # the codec's two buffers; the other tensors are the head (fp32)
EXPORT_NOTE = "fedkron_export.json"


class ExportError(ConfigError):
    """A run that cannot be exported as asked (one line, before any work)."""


@dataclasses.dataclass
class LoadedRun:
    cfg: RunConfig
    model: torch.nn.Module
    round: int | None  # None: the final adapter
    source: Path


def run_problems(run_dir: Path, rnd: int | None = None) -> list[str]:
    """Why ``run_dir`` holds no finished run (or no adapter for round ``rnd``); empty when it does."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        return [f"{run_dir}: no config.json (not a fedkron results folder)"]
    try:
        status = json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if rnd is not None:
        if not round_adapter_path(run_dir, rnd).is_file():
            kept = ", ".join(map(str, kept_rounds(run_dir))) or "none (the run had no --save-every)"
            return [f"{run_dir}: no adapter kept for round {rnd}; kept rounds: {kept}"]
        return []
    if status != "completed":
        return [f"{run_dir}: not a finished run (summary.json status {status!r}); finish it with --resume"]
    if not (run_dir / "adapter" / WEIGHTS_NAME).is_file():
        return [f"{run_dir}: no adapter/{WEIGHTS_NAME} (the final adapter)"]
    return []


def load_run(run_dir: str | Path, rnd: int | None = None) -> LoadedRun:
    """The run's model (rebuilt from its config.json, on the CPU) holding its final adapter, or round ``rnd``'s."""
    from fedkron.data.client_data import model_shape  # here: fedkron.data imports `datasets` (seconds)
    from fedkron.models import build_model  # here: transformers takes seconds to import

    run_dir = Path(run_dir)
    problems = run_problems(run_dir, rnd)
    if problems:
        raise ExportError("; ".join(problems))
    record = json.loads((run_dir / "config.json").read_text())
    cfg = dataclasses.replace(RunConfig.from_mapping(record), device="cpu").resolved()
    model = build_model(cfg, *model_shape(cfg))
    if rnd is None:
        source = run_dir / "adapter"
        load_adapter(model, source)
    else:
        source = round_adapter_path(run_dir, rnd)
        load_adapter_state_dict(model, load_file(str(source)))
    return LoadedRun(cfg, model, rnd, source)


def round_trip(model: torch.nn.Module, precision: str) -> tuple[dict[str, torch.Tensor], Encoded | None]:
    """The adapter state with its factors through ``precision`` and back (head unchanged), and the
    codec's payload for the quantized precisions."""
    state = {k: v.detach().cpu() for k, v in adapter_state_dict(model).items()}
    roles = adapter_factor_roles(model)
    factors = {k: v for k, v in state.items() if roles[k] != FULL_ROLE}
    if precision in FLOAT_PRECISIONS:
        dtype = FLOAT_PRECISIONS[precision]
        return {**state, **{k: v.to(dtype).to(v.dtype) for k, v in factors.items()}}, None
    codec = get_codec(precision)
    encoded = codec.encode(factors)
    decoded = codec.decode(encoded)
    return {**state, **{k: decoded[k].to(v.dtype) for k, v in factors.items()}}, encoded


def fedkron_weights(model: torch.nn.Module, precision: str, encoded: Encoded | None = None) -> tuple[str, bytes]:
    """(file name, safetensors bytes) of the fedkron-format adapter at ``precision``: float factors
    as tensors of that dtype, or the codec's codes + scales with its manifest in the metadata
    (``encoded``: :func:`round_trip`'s payload of this model, when the caller has it already)."""
    state = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(model).items()}
    roles = adapter_factor_roles(model)
    if precision in FLOAT_PRECISIONS:
        dtype = FLOAT_PRECISIONS[precision]
        tensors = {k: v if roles[k] == FULL_ROLE else v.to(dtype) for k, v in state.items()}
        return WEIGHTS_NAME, save(tensors, metadata={"format": "pt", "fedkron": "fedkron-adapter"})
    if encoded is None:
        _, encoded = round_trip(model, precision)
    tensors = {k: v for k, v in state.items() if roles[k] == FULL_ROLE}
    tensors[CODES] = torch.from_numpy(np.ascontiguousarray(encoded.codes, dtype=np.uint8))
    tensors[SCALES] = torch.from_numpy(np.ascontiguousarray(encoded.scales, dtype=np.float32))
    metadata = {"format": "pt", "fedkron": QUANTIZED_FORMAT, "manifest": json.dumps(encoded.manifest)}
    return QUANTIZED_NAME, save(tensors, metadata=metadata)


def load_exported(model: torch.nn.Module, folder: str | Path) -> torch.nn.Module:
    """Load a fedkron-format export into ``model`` (built as the run's): a float one as any adapter
    folder, a quantized one dequantized with the codec its manifest names (checked against the model)."""
    folder = Path(folder)
    if not (folder / QUANTIZED_NAME).is_file():
        return load_adapter(model, folder)
    with safe_open(str(folder / QUANTIZED_NAME), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("fedkron") != QUANTIZED_FORMAT or "manifest" not in metadata:
        raise ExportError(f"{folder / QUANTIZED_NAME} is not a {QUANTIZED_FORMAT} file")
    manifest = json.loads(metadata["manifest"])
    roles = adapter_factor_roles(model)
    current = adapter_state_dict(model)
    factor_shapes = {k: tuple(v.shape) for k, v in current.items() if roles[k] != FULL_ROLE}
    read_layout(manifest, factor_shapes)  # names and shapes must be this model's, before decoding
    tensors = load_file(str(folder / QUANTIZED_NAME))
    encoded = Encoded(tensors.pop(CODES).numpy(), tensors.pop(SCALES).numpy(), manifest)
    decoded = get_codec(manifest["codec"], **encoded.codec_options).decode(encoded)
    load_adapter_state_dict(model, {**tensors, **{k: decoded[k].to(current[k].dtype) for k in factor_shapes}})
    return model


def output_problems(out: Path, overwrite: bool) -> list[str]:
    out = Path(out)
    if out.exists() and not out.is_dir():
        return [f"--out {out} is a file"]
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        return [f"--out {out} is not empty; pass --overwrite to replace it"]
    return []


def export_problems(fmt: str, precision: str, merged: bool, out: Path, overwrite: bool) -> list[str]:
    """Every flag problem, named at once, before the run is read."""
    found = []
    if fmt not in FORMATS:
        found.append(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        found.append(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if merged and precision not in FLOAT_PRECISIONS:
        found.append(f"--merged writes float weights: --precision fp32, bf16 or fp16 (got {precision!r})")
    return found + output_problems(out, overwrite)


@dataclasses.dataclass
class Exported:
    folder: Path
    kind: str  # "peft LoKr", "peft LoRA", "fedkron", "merged"
    why: str
    files: dict[str, int]  # name → bytes on disk

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


def export_run(
    run_dir: str | Path,
    out: str | Path,
    fmt: str = "peft",
    merged: bool = False,
    precision: str = "fp32",
    rnd: int | None = None,
    overwrite: bool = False,
) -> Exported:
    """Write the run's adapter (or merged model) to ``out``; see the module docstring."""
    out = Path(out)
    problems = export_problems(fmt, precision, merged, out, overwrite) + run_problems(Path(run_dir), rnd)
    if problems:
        raise ExportError("cannot export:\n  - " + "\n  - ".join(problems))
    run = load_run(run_dir, rnd)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir(parents=True)
    try:
        if merged:
            kind, why = _write_merged(run, precision, tmp)
        elif fmt == "peft":
            kind, why = _write_peft(run, precision, tmp)
        else:
            kind, why = _write_fedkron(run, precision, tmp)
        _write_note(run, kind, precision, tmp)
        fsync_dir(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return Exported(out, kind, why, files)


def _replace_dir(tmp: Path, out: Path) -> None:
    """``tmp`` renamed to ``out``; an old ``out`` is moved aside first and removed only afterwards."""
    old = out.with_name(f".{out.name}.{secrets.token_hex(4)}.old") if out.exists() else None
    if old:
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent, files=False)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _write_fedkron(run: LoadedRun, precision: str, folder: Path) -> tuple[str, str]:
    save_adapter(run.model, folder)  # adapter_config.json (+ the fp32 weights, replaced below)
    name, data = fedkron_weights(run.model, precision)
    if name != WEIGHTS_NAME:
        (folder / WEIGHTS_NAME).unlink()
    atomic_write(folder / name, data)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    meta["precision"] = precision
    atomic_write(folder / CONFIG_NAME, (json.dumps(meta, indent=2) + "\n").encode())
    how = "codes + scales, dequantized by fedkron.sim.export.load_exported" if name != WEIGHTS_NAME else "tensors"
    return "fedkron", f"factors at {precision} ({how}); task head fp32"


def _write_peft(run: LoadedRun, precision: str, folder: Path) -> tuple[str, str]:
    state, _ = round_trip(run.model, precision)
    load_adapter_state_dict(run.model, state)
    if run.cfg.method == "lora":
        export_peft(run.model, folder, format="native")
        kind, why = "peft LoRA", "the run's method is LoRA"
    else:
        try:
            export_peft(run.model, folder, format="native")
            kind, why = "peft LoKr", "PEFT's LoKr rebuilds every factor shape (one decompose_factor fits)"
        except PeftExportError as err:
            for p in folder.iterdir():
                p.unlink()
            export_peft(run.model, folder, format="lora")
            reason = str(err).split(". Inject")[0]  # the rest is a hint for the Python API
            kind = "peft LoRA"
            why = f"exact LoRA (A⊗B as two low-rank factors), as {reason}; runs with --shape-policy peft export as LoKr"
    if precision in FLOAT_PRECISIONS and precision != "fp32":  # the stored values at that dtype
        path = folder / WEIGHTS_NAME
        tensors = {k: v.to(FLOAT_PRECISIONS[precision]) for k, v in load_file(str(path)).items()}
        atomic_write(path, save(tensors, metadata={"format": "pt"}))
    elif precision not in FLOAT_PRECISIONS:
        why += f"; factors round-tripped through {precision}, stored as fp32 (PEFT reads float tensors only)"
    return kind, why


def _write_merged(run: LoadedRun, precision: str, folder: Path) -> tuple[str, str]:
    model = run.model
    if not hasattr(model, "save_pretrained"):
        raise ExportError(f"--merged: a {type(model).__name__} is not a transformers model (no save_pretrained)")
    if run.cfg.base_quant != "none":
        raise ExportError(f"--merged: the base is quantized ({run.cfg.base_quant}); ΔW cannot be folded into it")
    merge(model)
    remove_adapters(model)
    model.to(FLOAT_PRECISIONS[precision]).save_pretrained(str(folder), safe_serialization=True)
    return "merged", f"base model with ΔW folded in, weights at {precision}; load with from_pretrained"


def _write_note(run: LoadedRun, kind: str, precision: str, folder: Path) -> None:
    """How a user loads the folder: the base model, its transformers class and head size."""
    from fedkron.data.client_data import model_shape  # here: fedkron.data imports `datasets` (seconds)
    from fedkron.models import is_language_model  # here: transformers takes seconds to import
    from fedkron.models.sources import minilm_path  # here: its package is found only when asked

    labels, multiple_choice = model_shape(run.cfg)
    base = {"minilm-l6": str(minilm_path()), "tiny-bert": "random init: fedkron.models.build_model"}.get(
        run.cfg.model, run.cfg.model
    )
    auto = (
        "AutoModelForCausalLM"
        if is_language_model(run.cfg.model)
        else "AutoModelForMultipleChoice"
        if multiple_choice
        else "AutoModelForSequenceClassification"
    )
    note = {
        "kind": kind,
        "precision": precision,
        "round": run.round if run.round is not None else "final",
        "run": str(run.source),
        "model": run.cfg.model,
        "base_model": base,
        "transformers_class": auto,
        "num_labels": labels if auto == "AutoModelForSequenceClassification" else None,
    }
    atomic_write(folder / EXPORT_NOTE, (json.dumps(note, indent=2) + "\n").encode())
