"""Run fedkron on Flower's simulation engine (Ray) from Python.

The ServerApp is a closure over the validated :class:`RunConfig` (``run_simulation`` gives the
ServerApp an empty run config); clients get the config from the server's messages, exactly as in
deployment, so the same ClientApp runs unchanged on Ray and on real SuperNodes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Callable

from fedkron import VERBOSE_ENV
from fedkron.config import RunConfig
from fedkron.preflight import clear_run, preflight

log = logging.getLogger("fedkron")


class _DropDeprecation(logging.Filter):
    """``run_simulation`` logs a deprecation notice each call; ``flwr run .`` is documented too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation" not in record.getMessage() and "fraction_evaluate" not in record.getMessage()


def backend_config(cfg: RunConfig) -> dict:
    """Ray resources: one CPU per virtual client (2 actors on 2 cores)."""
    cpus = 1.0
    return {
        "client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                      "logging_level": logging.ERROR, "log_to_driver": True},
    }


def run_sim(cfg: RunConfig, progress: Callable[[dict], None] | None = None, client_app=None,
            verbose: bool = False) -> dict:
    """Run one simulated federation; returns the run's summary (also in ``cfg.out``)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    else:  # inherited by the Ray actors: keep their output to what matters
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        logging.getLogger("flwr").setLevel(logging.WARNING)
        logging.getLogger("flwr").addFilter(_DropDeprecation())
    cfg = cfg.resolved()  # fail on bad config, a missing model, bad data or a taken folder before Ray starts
    preflight(cfg)
    if cfg.overwrite and not cfg.resume:
        clear_run(Path(cfg.out))
    if not cfg.client_state_dir:  # virtual clients keep error feedback on disk: survives a kill
        cfg = dataclasses.replace(cfg, client_state_dir=str(Path(cfg.out) / "client-state"))

    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedkron.client.client_app import app as default_client_app
    from fedkron.server.federation import run_federation

    outcome: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome["summary"] = run_federation(grid, cfg, progress=progress, resume=cfg.resume)

    run_simulation(
        server_app=server_app,
        client_app=client_app or default_client_app,
        num_supernodes=cfg.clients,
        backend_config=backend_config(cfg),
        verbose_logging=False,
    )
    if "summary" not in outcome:
        raise RuntimeError(f"the simulation ended without a result; see the log above and {cfg.out}")
    return outcome["summary"]
