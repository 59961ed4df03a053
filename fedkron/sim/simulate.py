"""Run fedkron on Flower's simulation engine (Ray) from Python.

The ServerApp is a closure over the validated :class:`RunConfig` (``run_simulation`` gives the
ServerApp an empty run config); clients get the config from the server's messages, exactly as in
deployment, so the same ClientApp runs unchanged on Ray and on real SuperNodes.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from fedkron.config import RunConfig

log = logging.getLogger("fedkron")


def backend_config(cfg: RunConfig) -> dict:
    """Ray resources: one CPU per virtual client by default (2 actors on 2 cores)."""
    cpus = float(cfg.extra.get("client_cpus", 1.0))
    return {
        "client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                      "logging_level": logging.ERROR, "log_to_driver": True},
    }


def run_sim(cfg: RunConfig, progress: Callable[[dict], None] | None = None, client_app=None) -> dict:
    """Run one simulated federation; returns the run's summary (also in ``cfg.out``)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    cfg = cfg.resolved()  # fail on bad config before Ray starts

    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedkron.client.client_app import app as default_client_app
    from fedkron.server.federation import run_federation

    outcome: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        outcome["summary"] = run_federation(grid, cfg, progress=progress)

    run_simulation(
        server_app=server_app,
        client_app=client_app or default_client_app,
        num_supernodes=cfg.clients,
        backend_config=backend_config(cfg),
    )
    if "summary" not in outcome:
        raise RuntimeError(f"the simulation ended without a result; see the log above and {cfg.out}")
    return outcome["summary"]
