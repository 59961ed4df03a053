"""Run the federation on a Flower Grid: build, broadcast, aggregate, evaluate, record.

Shared by the ServerApp (``flwr run``, deployment) and ``fedkron sim`` (Python simulation), so a
run behaves the same on Ray and on real SuperNodes.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from pathlib import Path

from flwr.app import ConfigRecord
from flwr.serverapp import Grid

from fedkron.adapters import adapter_factor_roles, adapter_state_dict, load_adapter_state_dict, save_adapter, trainable_parameter_count
from fedkron.config import RunConfig, codec_bits
from fedkron.server.results import MB, ResultsFolder
from fedkron.server.checkpoint import load_checkpoint, require_rounds_left, save_checkpoint
from fedkron.strategies import Ledger, PerFactorFedAvg, state_to_arrayrecord
from fedkron.models import build_model
from fedkron.task import eval_data, evaluate

log = logging.getLogger("fedkron")
Progress = Callable[[dict], None]


def run_federation(grid: Grid, cfg: RunConfig, progress: Progress | None = None, resume: bool = False) -> dict:
    """Run ``cfg.rounds`` rounds and write the results folder; returns the summary dict.

    With ``resume``, continue from the newest checkpoint in ``cfg.out`` (if there is one): the
    global factors, server optimiser, ledger and metrics so far are restored, and the remaining
    rounds run with the same seeded client schedule as an uninterrupted run. A finished run is
    extended the same way when ``cfg.rounds`` is raised above the rounds it has.
    """
    cfg = cfg.resolved()
    ckpt = load_checkpoint(Path(cfg.out)) if resume else None
    if ckpt:
        require_rounds_left(cfg.out, ckpt.round, cfg.rounds)
    # wall time of the rounds already done, so totals and `elapsed` cover the whole run
    before = sum(r.get("seconds") or 0.0 for r in ckpt.metrics) if ckpt else 0.0
    t_start = time.perf_counter() - before
    results = ResultsFolder(cfg.out, keep=ckpt.metrics if ckpt else None)
    results.write_json("config.json", cfg.to_record())

    evalset = eval_data(cfg)
    model = build_model(cfg, evalset.task.num_labels, evalset.task.kind == "multiple_choice")
    initial = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    ledger = ckpt.ledger if ckpt else Ledger()
    strategy = PerFactorFedAvg(cfg, {k: v.shape for k, v in initial.items()}, ledger,
                               roles=adapter_factor_roles(model))
    # safetensors loads keys sorted; keep the model's order (it is the order on the wire)
    strategy.global_state = {k: ckpt.global_state[k] for k in initial} if ckpt else initial
    if ckpt:
        strategy.server_opt.load_state_dict(ckpt.server_opt)
        log.info("resuming %s after round %d", cfg.out, ckpt.round)
    summary: dict = {
        "method": cfg.method, "codec": cfg.quant, "bits": codec_bits(cfg.quant), "downlink": cfg.downlink,
        "task": cfg.task, "model": cfg.model, "clients": cfg.clients, "rounds": cfg.rounds,
        "aggregation": cfg.aggregation, "trainable_params": sum(initial[n].numel() for n in strategy.expected),
        "adapter_params": trainable_parameter_count(model),
        "majority_baseline": evalset.majority_baseline,
        "eval_rows": evalset.num_rows, "eval_note": evalset.note, "status": "running",
        "resumed_from_round": ckpt.round if ckpt else None,
    }
    last_round_end = [time.perf_counter()]

    def evaluate_round(server_round: int) -> None:
        load_adapter_state_dict(model, strategy.global_state)
        loss, acc = evaluate(model, evalset.data)
        now = time.perf_counter()
        stats = strategy.round_stats.get(server_round, {})
        row = {
            "round": server_round, "accuracy": acc, "loss": loss,
            "bytes_up": ledger.total("up", round=server_round),
            "bytes_down": ledger.total("down", round=server_round),
            "bytes_up_total": ledger.total("up"), "bytes_down_total": ledger.total("down"),
            "payload_up": ledger.total("up", "payload", round=server_round),
            "count_bytes_up": ledger.total("up", "count_bytes", round=server_round),
            "seconds": now - last_round_end[0], "elapsed": now - t_start,
            "accepted": stats.get("accepted", 0), "rejected": stats.get("rejected", 0),
            "failed": stats.get("failed", 0), "majority_baseline": evalset.majority_baseline,
            "aggregation_error": stats.get("aggregation_error"),
            "fit_seconds": stats.get("fit_seconds"), "client_seconds": stats.get("client_seconds"),
            "train_seconds": stats.get("train_seconds"),
        }
        last_round_end[0] = now
        results.append_metrics(row)
        if progress:
            progress(row)

    try:
        first = ckpt.round + 1 if ckpt else 1
        if not ckpt:
            evaluate_round(0)
        for rnd in range(first, cfg.rounds + 1):
            t_fit = time.perf_counter()
            messages = strategy.configure_train(rnd, state_to_arrayrecord(strategy.global_state), ConfigRecord(), grid)
            replies = grid.send_and_receive(messages, timeout=cfg.round_timeout or 3600)
            strategy.aggregate_train(rnd, replies)
            strategy.round_stats[rnd]["fit_seconds"] = time.perf_counter() - t_fit
            evaluate_round(rnd)
            save_checkpoint(results.path, rnd, strategy.global_state, strategy.server_opt.state_dict(),
                            ledger, results.rows)
        load_adapter_state_dict(model, strategy.global_state)
        save_adapter(model, results.path / "adapter")
        summary["status"] = "completed"
    except BaseException as err:
        summary["status"] = f"failed: {type(err).__name__}: {err}"
        raise
    finally:
        _finish(results, ledger, summary, cfg, time.perf_counter() - t_start)
    return summary


def _finish(results: ResultsFolder, ledger: Ledger, summary: dict, cfg: RunConfig, seconds: float) -> None:
    """Ledger, summary and plot, written whether the run completed or not."""
    ledger.write_csv(results.path / "ledger.csv")
    rows = [r for r in results.rows if r["round"] >= 1]
    accs = [r["accuracy"] for r in rows]
    n_up = max(ledger.count("up"), 1)
    summary.update(
        rounds_completed=len(rows),
        initial_accuracy=results.rows[0]["accuracy"] if results.rows else None,
        final_accuracy=accs[-1] if accs else None,
        best_accuracy=max(accs) if accs else None,
        final_loss=rows[-1]["loss"] if rows else None,
        **ledger.totals(),
        mb_up_per_client_round=ledger.total("up") / n_up / MB,
        mb_down_per_client_round=ledger.total("down") / max(ledger.count("down"), 1) / MB,
        seconds=seconds,
    )
    results.write_json("summary.json", summary)
    try:
        results.plot(f"{cfg.method} / {cfg.quant} on {cfg.task}")
    except Exception as err:  # a plot must never lose a run's numbers
        log.warning("plot failed: %s", err)
