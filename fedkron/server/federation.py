"""Run the federation on a Flower Grid: build, run Flower's round loop, evaluate, record.

Shared by the ServerApp (``flwr run``, deployment) and ``fedkron sim`` (Python simulation), so a
run behaves the same on Ray and on real SuperNodes. The rounds are Flower's ``Strategy.start``
over the :class:`~fedkron.strategies.wrapper.FedKron` wrapper; the ledger sits in the Grid; the
central evaluation writes each round's metrics row and checkpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fedkron.adapters import (
    adapter_factor_roles,
    adapter_state_dict,
    load_adapter_state_dict,
    save_adapter,
    trainable_parameter_count,
)
from fedkron.data import check_task_data, resolve_source
from fedkron.data.client_data import EvalSet, eval_data, generation_prompts, model_shape, task_spec
from fedkron.devices.timing import append_timing_csv
from fedkron.models import build_model, load_tokenizer
from fedkron.runconfig.fields import DEFAULT_ROUND_TIMEOUT, RunConfig, codec_bits
from fedkron.server.checkpoint import (
    Checkpoint,
    keep_round_adapter,
    load_checkpoint,
    require_rounds_left,
    save_checkpoint,
)
from fedkron.server.init_adapter import initial_state
from fedkron.server.interrupt import RunInterrupted, StoppableGrid
from fedkron.server.ledger import MB, Ledger, LedgerGrid
from fedkron.server.progress import ReplyTicker
from fedkron.server.results import ResultsFolder
from fedkron.server.rounds import run_rounds
from fedkron.strategies.edge import keep_timing_rows, timing_row
from fedkron.strategies.registry import build_strategy
from fedkron.strategies.wrapper import FedKron, from_arrayrecord, to_arrayrecord
from fedkron.training.language_model import sample_generations
from fedkron.training.local import evaluate_metrics

log = logging.getLogger("fedkron")
SIM_TOTALS = (
    "sim_seconds",
    "sim_transfer_seconds",
    "sim_compute_seconds",
    "sim_wait_seconds",
    "offline",
    "dropped",
    "late",
    "surplus",
)
Progress = Callable[[dict], None]
ROUND_STATS = (
    "accepted",
    "rejected",
    "failed",
    "aggregation_error",
    "fit_seconds",
    "client_seconds",
    "train_seconds",
    "train_loss",
    "client_peak_memory_mb",
    "fed_accuracy",
    "fed_loss",
    "fed_examples",
    "dp_noise_stdev",
    "dp_clipping_norm",
    "dp_epsilon",
    "aggregate_refused",
    "sample_seconds",
    "abandoned",
)


@dataclass
class FederationRun:
    """One run's state while Flower's round loop runs: what the per-round evaluation reads and
    writes (the model it scores, the ledger, the results folder, the clock of the last round)."""

    cfg: RunConfig
    results: ResultsFolder
    model: torch.nn.Module
    evalset: EvalSet | None
    ledger: Ledger
    strategy: FedKron
    summary: dict
    t_start: float  # moved back by the seconds of the rounds a resumed run already has
    last_round_end: float
    progress: Progress | None = None
    ticker: ReplyTicker | None = None

    @property
    def timing_csv(self) -> Path:
        return self.results.path / "timing.csv"

    def evaluate_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Flower's ``evaluate_fn``: score the global adapter, write the round's metrics row and its
        checkpoint."""
        state = from_arrayrecord(arrays)
        scores = self.score(server_round, state)
        row = self.metrics_row(server_round, scores)
        if self.ticker:
            self.ticker.round, self.ticker.last = server_round + 1, 0.0
        self.results.append_metrics(row)
        if self.progress:
            self.progress(row)
        if server_round >= 1:
            save_checkpoint(
                self.results.path,
                server_round,
                state,
                self.strategy.state_dict(),
                self.ledger,
                self.results.rows,
                self.cfg.to_record(),
            )
            if self.cfg.save_every and server_round % self.cfg.save_every == 0:
                keep_round_adapter(self.results.path, server_round, state, self.cfg.to_record())
        loss, acc = scores.get("loss"), scores.get("accuracy")
        return MetricRecord({k: v for k, v in (("accuracy", acc), ("loss", loss)) if v is not None})

    def score(self, server_round: int, state: dict[str, torch.Tensor]) -> dict:
        """The central evaluation of ``state`` (empty with ``--no-central-eval``)."""
        if not self.evalset:
            return {}
        load_adapter_state_dict(self.model, state)
        scores = evaluate_metrics(self.model, self.evalset.data)
        if self.cfg.task == "instruct":
            write_generations(self.results.path, server_round, self.cfg, self.model)
        return scores

    def metrics_row(self, server_round: int, scores: dict) -> dict:
        """The round's row of ``metrics.jsonl``: scores, bytes from the ledger, times, round stats."""
        ledger, now = self.ledger, time.perf_counter()
        stats = self.strategy.round_stats.get(server_round, {})
        row = {
            "round": server_round,
            "accuracy": scores.get("accuracy"),
            "loss": scores.get("loss"),
            "bytes_up": ledger.total("up", round=server_round),
            "bytes_down": ledger.total("down", round=server_round),
            "bytes_up_total": ledger.total("up"),
            "bytes_down_total": ledger.total("down"),
            "payload_up": ledger.total("up", "payload", round=server_round),
            "count_bytes_up": ledger.total("up", "count_bytes", round=server_round),
            "seconds": now - self.last_round_end,
            "elapsed": now - self.t_start,
            "majority_baseline": self.summary["majority_baseline"],
            **{k: v for k, v in scores.items() if k not in ("loss", "accuracy")},
            **{k: stats.get(k, 0 if k in ("accepted", "rejected", "failed") else None) for k in ROUND_STATS},
        }
        self.last_round_end = now
        if self.strategy.edge:
            timing = self.strategy.edge.timings.pop(server_round, None)
            rows = self.results.rows
            row.update(timing_row(timing, (rows[-1].get("sim_seconds_total") or 0.0) if rows else 0.0))
            if timing is not None:
                append_timing_csv(self.timing_csv, server_round, timing)
        return row


def run_federation(
    grid: Grid,
    cfg: RunConfig,
    progress: Progress | None = None,
    resume: bool = False,
    known_partitions: Callable[[], dict[int, tuple[int, int]]] | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Run ``cfg.rounds`` rounds and write the results folder; returns the summary dict.

    With ``resume``, continue from the newest checkpoint in ``cfg.out`` (if there is one): the
    global factors, the strategy's state, ledger and metrics so far are restored, and the remaining
    rounds run with the same seeded client schedule as an uninterrupted run. A finished run is
    extended the same way when ``cfg.rounds`` is raised above the rounds it has.
    ``known_partitions()`` (simulation): node → (partition, partitions), so nodes need no query.
    ``stop`` (simulation): once set, the run ends at its next message exchange, status
    "interrupted" (:class:`~fedkron.server.interrupt.RunInterrupted` is raised).
    """
    cfg = cfg.resolved()
    ckpt = load_checkpoint(Path(cfg.out)) if resume else None
    if ckpt:
        require_rounds_left(cfg.out, ckpt.round, cfg.rounds)
    run = start_run(cfg, ckpt, progress, known_partitions)
    strategy = run.strategy
    ledger_grid = LedgerGrid(
        StoppableGrid(grid, stop) if stop is not None else grid,
        run.ledger,
        partition_of=lambda node: strategy.roster.partition_of.get(node, -1),
        on_reply=run.ticker,
    )
    if ckpt:  # safetensors loads keys sorted; the wrapper keeps the model's order (the order on the wire)
        strategy.load_state_dict(ckpt.global_state, ckpt.strategy_tensors, ckpt.strategy_values)
        log.info("resuming %s after round %d", cfg.out, ckpt.round)
    run.last_round_end = time.perf_counter()
    try:
        run_rounds(
            strategy,
            ledger_grid,
            to_arrayrecord(strategy.global_state),
            (ckpt.round + 1) if ckpt else 1,
            cfg.rounds,
            run.evaluate_round,
            cfg.round_timeout or DEFAULT_ROUND_TIMEOUT,
        )
        load_adapter_state_dict(run.model, strategy.global_state)
        save_adapter(run.model, run.results.path / "adapter")
        run.summary["status"] = "completed"
    except RunInterrupted:
        run.summary["status"] = "interrupted"
        raise
    except BaseException as err:
        run.summary["status"] = f"failed: {type(err).__name__}: {err}"
        raise
    finally:
        _finish(run.results, run.ledger, run.summary, cfg, time.perf_counter() - run.t_start)
    return run.summary


def start_run(
    cfg: RunConfig,
    ckpt: Checkpoint | None,
    progress: Progress | None,
    known_partitions: Callable[[], dict[int, tuple[int, int]]] | None,
) -> FederationRun:
    """The results folder, the model, the evaluation set and the strategy of a run, fresh or
    continued from ``ckpt`` (same order as ever: the checkpoint's RNG state seeds the model)."""
    # wall time of the rounds already done, so totals and `elapsed` cover the whole run
    t_start = time.perf_counter() - (sum(r.get("seconds") or 0.0 for r in ckpt.metrics) if ckpt else 0.0)
    results = ResultsFolder(cfg.out, keep=ckpt.metrics if ckpt else None)
    results.write_json("config.json", cfg.to_record())
    evalset = eval_data(cfg) if cfg.central_eval else None
    model = build_model(cfg, *model_shape(cfg))
    initial = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    if cfg.init_adapter and not ckpt:  # a resumed run goes on from its checkpoint instead
        initial = initial_state(cfg, model, initial)
    ledger = ckpt.ledger if ckpt else Ledger()
    strategy = FedKron(
        build_strategy(cfg),
        cfg,
        initial,
        adapter_factor_roles(model),
        ledger=ledger,
        partition_sizes=partition_sizes(cfg),
        known_partitions=known_partitions,
    )
    if strategy.edge:  # per client-round simulated times; a resumed run keeps the rounds it has
        keep_timing_rows(results.path / "timing.csv", ckpt.round if ckpt else 0)
    summary = first_summary(cfg, model, initial, strategy, evalset, ckpt)
    return FederationRun(
        cfg=cfg,
        results=results,
        model=model,
        evalset=evalset,
        ledger=ledger,
        strategy=strategy,
        summary=summary,
        t_start=t_start,
        last_round_end=time.perf_counter(),
        progress=progress,
        ticker=ReplyTicker() if progress else None,
    )


def first_summary(cfg: RunConfig, model, initial: dict, strategy: FedKron, evalset, ckpt: Checkpoint | None) -> dict:
    """The summary's fixed part (what ran, on what, how big), status "running"."""
    return {
        "method": cfg.method,
        "codec": cfg.uplink,
        "bits": codec_bits(cfg.uplink),
        "downlink": cfg.downlink,
        "task": cfg.task,
        "model": cfg.model,
        "clients": cfg.clients,
        "rounds": cfg.rounds,
        "aggregation": cfg.aggregation,
        "strategy": cfg.strategy,
        "trainable_params": sum(initial[n].numel() for n in strategy.broadcast),  # all, over the rounds
        "adapter_params": trainable_parameter_count(model),
        "majority_baseline": evalset.majority_baseline if evalset else None,
        "eval_rows": evalset.num_rows if evalset else 0,
        "eval_note": evalset.note if evalset else "no central evaluation (--no-central-eval)",
        "status": "running",
        "resumed_from_round": ckpt.round if ckpt else None,
        "init_adapter": cfg.init_adapter or None,
    }


def partition_sizes(cfg: RunConfig) -> dict[int, int] | None:
    """Rows of each client's partition when this process can read the training data locally (the
    packaged set, or a data folder), so no client can claim more examples than it holds."""

    spec = task_spec(cfg)
    if spec is None:  # instruction data: every client reports its own partition's size
        return None
    try:
        if resolve_source(spec, cfg.data_dir or None, "auto")[0] == "hub":
            return None
        check = check_task_data(
            spec, cfg.data_dir or None, cfg.clients, cfg.partition, cfg.seed, alpha=cfg.dirichlet_alpha
        )
    except Exception as err:  # a server without the data caps weights by share instead
        log.info("the server cannot read the training data (%s); client weights are capped by share", err)
        return None
    return dict(enumerate(check.partition_sizes))


def write_generations(folder: Path, server_round: int, cfg: RunConfig, model) -> None:
    """A few held-out instructions answered greedily by the global model, appended per round."""

    prompts = generation_prompts(cfg)
    outputs = sample_generations(model, load_tokenizer(cfg.model), prompts, max_new_tokens=48)
    with (folder / "generations.jsonl").open("a") as fh:
        for prompt, output in zip(prompts, outputs):
            fh.write(json.dumps({"round": server_round, "prompt": prompt, "output": output}) + "\n")


def _finish(results: ResultsFolder, ledger: Ledger, summary: dict, cfg: RunConfig, seconds: float) -> None:
    """Ledger, summary and plot, written whether the run completed or not. On a failing run a write
    that fails too (a full disk) is only logged, so the run's own error is the one reported."""
    ledger_error = _attempt("ledger.csv", lambda: ledger.write_csv(results.path / "ledger.csv"))
    summary.update(_outcome(results.rows, ledger, cfg, seconds))
    summary_error = _attempt("summary.json", lambda: results.write_json("summary.json", summary))
    if summary["status"] == "completed" and (ledger_error or summary_error):
        raise ledger_error or summary_error
    try:
        results.plot(f"{cfg.method} / {cfg.uplink} on {cfg.task}")
    except Exception as err:  # a plot must never lose a run's numbers
        log.warning("plot failed: %s", err)


def _attempt(name: str, write: Callable[[], object]) -> OSError | None:
    """Run ``write``; an OSError (no space, no permission) is logged and returned, not raised."""
    try:
        write()
    except OSError as err:
        log.warning("%s could not be written: %s", name, err)
        return err
    return None


def _outcome(all_rows: list[dict], ledger: Ledger, cfg: RunConfig, seconds: float) -> dict:
    """The summary's figures from the metrics rows and the ledger."""
    rows = [r for r in all_rows if r["round"] >= 1]
    accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    outcome = dict(
        rounds_completed=len(rows),
        initial_accuracy=all_rows[0]["accuracy"] if all_rows else None,
        final_accuracy=accs[-1] if accs else None,
        best_accuracy=max(accs) if accs else None,
        final_loss=rows[-1]["loss"] if rows else None,
        final_fed_accuracy=rows[-1].get("fed_accuracy") if rows else None,
        **ledger.totals(),
        mb_up_per_client_round=ledger.total("up") / max(ledger.count("up"), 1) / MB,
        mb_down_per_client_round=ledger.total("down") / max(ledger.count("down"), 1) / MB,
        seconds=seconds,
    )
    if any("sim_seconds" in r for r in rows):  # --devices: simulated time, its split, who was not heard
        outcome.update(
            {k.replace("sim_seconds", "sim_seconds_total"): sum(r.get(k) or 0 for r in rows) for k in SIM_TOTALS},
            devices=cfg.devices,
        )
    return outcome
