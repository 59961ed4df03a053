"""Run fedkron on Flower's simulation engine (Ray) from Python.

The ServerApp is a closure over the validated :class:`RunConfig` (``run_simulation`` gives the
ServerApp an empty run config); clients get the config from the server's messages, exactly as in
deployment, so the same ClientApp runs unchanged on Ray and on real SuperNodes. Several
federations (a ``fedkron compare``) share one Ray start and the same simulated SuperNodes: the
actors keep their tokenized data between runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from fedkron.logs import VERBOSE_ENV, quiet_third_party
from fedkron.runconfig.fields import RunConfig
from fedkron.server.preflight import clear_run, preflight

log = logging.getLogger("fedkron")
Progress = Callable[[dict], None]


class _DropDeprecation(logging.Filter):
    """``run_simulation`` logs a deprecation notice each call; ``flwr run .`` is documented too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation" not in record.getMessage() and "fraction_evaluate" not in record.getMessage()


def backend_config(cfg: RunConfig) -> dict:
    """Flower's Ray backend config: ``--client-cpus`` / ``--client-gpus`` per virtual client (Flower
    starts as many actors as fit: CPUs / client-cpus), ``--max-actors`` caps them by telling Ray
    this machine has max-actors × client-cpus CPUs, ``--ray-address`` attaches to a running cluster
    (whose CPUs then decide; ``ray.init`` refuses num_cpus there)."""
    init: dict = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": True}
    if cfg.ray_address:
        init["address"] = cfg.ray_address
    else:
        init["num_cpus"] = cfg.max_actors * cfg.client_cpus if cfg.max_actors else (os.cpu_count() or 1)
    return {"client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": cfg.client_gpus}, "init_args": init}


def quiet(verbose: bool) -> None:
    """Environment for this process and the Ray actors it starts: third-party notices off unless
    ``verbose``."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    quiet_third_party()
    logging.getLogger("flwr").addFilter(_DropDeprecation())


def prepared(cfg: RunConfig, checked: bool = False) -> RunConfig:
    """``cfg`` resolved and checked (unless ``checked``), an old run cleared on ``--overwrite``,
    with the folder where virtual clients keep their error feedback (on disk: survives a kill)."""
    cfg = cfg.resolved()
    if not checked:
        preflight(cfg)
    if cfg.overwrite and not cfg.resume:
        clear_run(Path(cfg.out))
    if not cfg.client_state_dir:
        cfg = dataclasses.replace(cfg, client_state_dir=str(Path(cfg.out) / "client-state"))
    return cfg


def run_many(
    cfgs: list[RunConfig],
    progress: list[Progress | None] | None = None,
    client_app=None,
    verbose: bool = False,
    query_partitions: bool = False,
) -> list[dict]:
    """Run several prepared federations one after the other on one Ray start; a run that fails is
    reported in its summary (``status``) and the others go on. The server takes each node's
    partition from the simulation engine instead of asking it (``query_partitions``: ask, as a
    deployed server must)."""
    quiet(verbose)
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedkron.client.client_app import app as default_client_app
    from fedkron.server.federation import run_federation

    progress = progress or [None] * len(cfgs)
    summaries: list[dict] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        for cfg, report in zip(cfgs, progress):
            try:
                summaries.append(
                    run_federation(
                        grid,
                        cfg,
                        progress=report,
                        resume=cfg.resume,
                        known_partitions=None if query_partitions else nodes.get,
                    )
                )
            except Exception as err:  # the summary in the run's folder says so too
                log.error("run %s failed: %s: %s", cfg.out, type(err).__name__, err)
                summaries.append({"status": f"failed: {type(err).__name__}: {err}", "out": cfg.out})

    with engine_partitions() as nodes:
        run_simulation(
            server_app=server_app,
            client_app=client_app or default_client_app,
            num_supernodes=max(c.clients for c in cfgs),
            backend_config=backend_config(cfgs[0]),
            verbose_logging=False,
        )
    if len(summaries) < len(cfgs):
        raise RuntimeError(f"the simulation ended after {len(summaries)} of {len(cfgs)} runs; see the log above")
    return summaries


class EnginePartitions:
    """Flower's simulation engine's own node → partition table, once it has registered the nodes."""

    def __init__(self) -> None:
        self._table: dict[int, tuple[int, int]] = {}
        self._ready = threading.Event()

    def set(self, mapping: dict[int, int]) -> None:
        self._table = {int(node): (int(pid), len(mapping)) for node, pid in mapping.items()}
        self._ready.set()

    def get(self, timeout: float = 60.0) -> dict[int, tuple[int, int]]:
        """The table (empty if the engine never filled it: the server then asks the nodes)."""
        self._ready.wait(timeout)
        return self._table


@contextmanager
def engine_partitions():
    """Capture the node → partition mapping that ``flwr.simulation`` makes when it registers the
    virtual SuperNodes (``vce_api._register_nodes``, flwr 1.41; node ids are random, partition i is
    the i-th node registered). The ServerApp runs in this process, so it can read it instead of
    sending every node a query. Without that function (another flwr) the table stays empty."""
    from fedkron.flwr_private import vce_api  # here: it imports the simulation engine

    table, original = EnginePartitions(), getattr(vce_api, "_register_nodes", None)
    if original is None:
        table.set({})
        yield table
        return

    def register(*args, **kwargs):
        mapping = original(*args, **kwargs)
        table.set(mapping)
        return mapping

    vce_api._register_nodes = register
    try:
        yield table
    finally:
        vce_api._register_nodes = original


def run_sim(cfg: RunConfig, progress: Progress | None = None, client_app=None, verbose: bool = False) -> dict:
    """Run one simulated federation; returns the run's summary (also in ``cfg.out``). Every problem
    that can be known before Ray starts (config, model, data, results folder) stops it here."""
    quiet(verbose)
    (summary,) = run_many([prepared(cfg)], [progress], client_app=client_app, verbose=verbose)
    if summary["status"].startswith("failed"):
        raise RuntimeError(f"{cfg.out}: {summary['status']}")
    return summary
