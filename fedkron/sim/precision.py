"""Adapter precision robustness: the final global adapter scored after a round trip through each
precision (factors only: quantize → dequantize with the project's codecs; base model and task head
unchanged), on the run's held-out rows, with the size on disk of the adapter at that precision.

Opt-in (``fedkron evaluate RUN_DIR`` or ``fedkron compare --precision-eval``), so a default run
costs no more; the table goes into the run's ``summary.json`` under ``precision_robustness`` and
into the compare report's "Adapter precision" section.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedkron.adapters import adapter_factor_roles, adapter_state_dict, load_adapter_state_dict
from fedkron.adapters.model import FULL_ROLE
from fedkron.server.results import write_json
from fedkron.sim.export import PRECISIONS, ExportError, fedkron_weights, load_run, round_trip

KEY = "precision_robustness"
DEFAULT_PRECISIONS = ("fp32", "bf16", "int8", "nf4", "fp4")


def parse_precisions(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in PRECISIONS]
    if bad or not names:
        raise ExportError(f"--precisions {text!r}: each must be one of {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(names))


def factor_error(model: torch.nn.Module, original: dict[str, torch.Tensor]) -> float:
    """‖factors now − original factors‖ / ‖original factors‖ over every factor (Frobenius)."""
    roles = adapter_factor_roles(model)
    now = adapter_state_dict(model)
    keys = [k for k in original if roles[k] != FULL_ROLE]
    diff = sum(float((now[k].double() - original[k].double()).pow(2).sum()) for k in keys)
    norm = sum(float(original[k].double().pow(2).sum()) for k in keys)
    return (diff / norm) ** 0.5 if norm else 0.0


def precision_table(model: torch.nn.Module, data: dict, precisions: list[str]) -> list[dict]:
    """One row per precision: accuracy and loss after the round trip, factor error, adapter bytes."""
    from fedkron.training.local import evaluate_metrics  # here: the training stack imports transformers

    original = {k: v.detach().clone() for k, v in adapter_state_dict(model).items()}
    rows = []
    try:
        for precision in precisions:
            load_adapter_state_dict(model, original)
            state, encoded = round_trip(model, precision)  # encoded once: scored and sized
            name, data_bytes = fedkron_weights(model, precision, encoded)
            load_adapter_state_dict(model, state)
            scores = evaluate_metrics(model, data)
            rows.append(
                {
                    "precision": precision,
                    "accuracy": scores.get("accuracy"),
                    "loss": scores.get("loss"),
                    "factor_rel_error": factor_error(model, original),
                    "adapter_bytes": len(data_bytes),
                    "file": name,
                }
            )
    finally:
        load_adapter_state_dict(model, original)
    return rows


def evaluate_precisions(run_dir: str | Path, precisions: list[str] | None = None, write: bool = True) -> dict:
    """The precision table of a finished run's final adapter; written into its summary.json."""
    from fedkron.data.client_data import eval_data  # here: fedkron.data imports `datasets` (seconds)

    run_dir = Path(run_dir)
    precisions = list(precisions or DEFAULT_PRECISIONS)
    run = load_run(run_dir)
    evalset = eval_data(run.cfg)
    rows = precision_table(run.model, evalset.data, precisions)
    table = {"round": "final", "eval_rows": evalset.num_rows, "eval_note": evalset.note, "rows": rows}
    if write:
        summary = json.loads((run_dir / "summary.json").read_text())
        summary[KEY] = table
        write_json(run_dir / "summary.json", summary)
    return table


def table_text(table: dict) -> str:
    """The table as markdown (what ``fedkron evaluate`` prints)."""
    lines = ["| precision | accuracy | loss | factor rel. error | adapter bytes |", "|---|---|---|---|---|"]
    for r in table["rows"]:
        acc = "–" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        loss = "–" if r["loss"] is None else f"{r['loss']:.4f}"
        lines.append(f"| {r['precision']} | {acc} | {loss} | {r['factor_rel_error']:.2e} | {r['adapter_bytes']:,} |")
    return "\n".join(lines)
