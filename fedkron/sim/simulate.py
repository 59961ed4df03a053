"""Run fedkron on Flower's simulation engine (Ray) from Python.

The ServerApp is a closure over the validated :class:`RunConfig` (``run_simulation`` gives the
ServerApp an empty run config); clients get the config from the server's messages, exactly as in
deployment, so the same ClientApp runs unchanged on Ray and on real SuperNodes. Several
federations (a ``fedkron compare``) share one Ray start and the same simulated SuperNodes: the
actors keep their tokenized data between runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import flwr.simulation
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedkron.client.client_app import app as default_client_app
from fedkron.logs import VERBOSE_ENV, quiet_third_party
from fedkron.runconfig.fields import ConfigError, RunConfig
from fedkron.server.federation import run_federation
from fedkron.server.interrupt import RunInterrupted
from fedkron.server.preflight import clear_run, preflight
from fedkron.sim.reaper import actor_processes

log = logging.getLogger("fedkron")
Progress = Callable[[dict], None]
RAY_PROBE_SECONDS = 5.0
WIND_DOWN_SECONDS = 10.0  # after SIGINT / SIGTERM, what clients get to finish their task


class SimulationInterrupted(Exception):
    """SIGINT / SIGTERM ended the simulation; ``summaries`` are those of the runs that ran (the last
    one "interrupted"), ``signum`` the signal."""

    def __init__(self, summaries: list[dict], signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.summaries, self.signum = summaries, signum


class RunFailed(RuntimeError):
    """A simulated run ended with status "failed: ..." (its summary says why)."""


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
    problems = ray_address_problems(cfg.ray_address)
    if problems:  # before the results folder is touched: nothing is scored or written
        raise ConfigError("cannot start the run:\n  - " + "\n  - ".join(problems))
    if not checked:
        preflight(cfg)
    if cfg.overwrite and not cfg.resume:
        clear_run(Path(cfg.out))
    if not cfg.client_state_dir:
        cfg = dataclasses.replace(cfg, client_state_dir=str(Path(cfg.out) / "client-state"))
    return cfg


def ray_address_problems(address: str, timeout: float = RAY_PROBE_SECONDS) -> list[str]:
    """``--ray-address`` must answer: Ray itself retries an unreachable address for many minutes
    (and ignores SIGTERM meanwhile), so the port is tried here first, with a short timeout."""
    address = (address or "").strip()
    if address in ("", "auto", "local"):
        return []  # Ray starts one here, or finds (or fails to find) the local cluster at once
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return [f"--ray-address {address}: expected HOST:PORT of a running Ray cluster, e.g. 127.0.0.1:6379"]
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        return [
            f"--ray-address {address}: no Ray cluster answers there ({why}); start one with "
            "`ray start --head` or leave --ray-address out to start Ray here"
        ]
    return []


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
    deployed server must). SIGINT / SIGTERM stop the simulation at the next message exchange:
    the run's summary says "interrupted", Ray is shut down and :class:`SimulationInterrupted` raised."""
    quiet(verbose)

    summaries: list[dict] = []
    stop, caught = threading.Event(), []
    backend = backend_config(cfgs[0])
    with engine_partitions() as nodes, ray_reaper(cfgs[0]), stop_on_signals(stop, caught) as rearm:
        server_app = _server_app(cfgs, progress, summaries, stop, nodes, query_partitions)
        try:
            start_ray(backend["init_args"], actor_env(cfgs[0]))
            rearm()  # ray.init installs its own SIGTERM handler (exit at once, no summary)
            if not stop.is_set():
                flwr.simulation.run_simulation(  # looked up at call time: tests can stand in for it
                    server_app=server_app,
                    client_app=client_app or default_client_app,
                    num_supernodes=max(c.clients for c in cfgs),
                    backend_config=backend,
                    verbose_logging=False,
                )
        except KeyboardInterrupt:  # a signal before the handlers were ours (during ray.init)
            stop.set()
            caught.append(signal.SIGINT)
        finally:
            _shutdown_ray()
    if stop.is_set():
        raise SimulationInterrupted(summaries, caught[0] if caught else signal.SIGINT)
    if len(summaries) < len(cfgs):
        raise RuntimeError(f"the simulation ended after {len(summaries)} of {len(cfgs)} runs; see the log above")
    return summaries


def actor_env(cfg: RunConfig) -> dict[str, str]:
    """Environment for the simulated clients' Ray workers: torch threads = the CPUs Ray reserves for
    each client (``--client-cpus``). Left alone, torch in every actor starts one thread per core, so
    two actors on two cores run four threads: a SmolLM2 local step took 30–48 s with two threads and
    2.5 s with one on a busy 2-core machine (docs/language-models.md). A value the user exported is kept."""
    if os.environ.get("OMP_NUM_THREADS"):
        return {}
    return {"OMP_NUM_THREADS": str(max(1, math.floor(cfg.client_cpus)))}


def start_ray(init_args: dict, env: dict[str, str] | None = None) -> None:
    """Start (or attach to) Ray here, as Flower's Ray backend would (it then finds Ray running and
    uses it), so the simulation owns the signal handlers once Ray is up and no round is scored
    before Ray is there. ``env``: extra environment variables for Ray's workers."""
    import ray  # here: a heavy import, needed only once a simulation starts

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(sys.path)  # Ray's workers get this process's import path, as in Flower
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **(env or {})}}, **init_args)


def _server_app(cfgs, progress, summaries: list[dict], stop: threading.Event, nodes, query_partitions: bool):
    """The ServerApp that runs ``cfgs`` one after the other, appending each summary; it stops at
    the first interrupted run (``stop`` set), and Flower's engine then ends as after a last run."""
    # here: Flower's strategies load the server runtime (a second); read only when a run starts

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        for cfg, report in zip(cfgs, progress or [None] * len(cfgs)):
            if stop.is_set():
                return
            try:
                partitions = None if query_partitions else nodes.get
                summaries.append(run_federation(grid, cfg, report, cfg.resume, partitions, stop=stop))
            except RunInterrupted:
                summaries.append(_written_summary(cfg, "interrupted"))
                return
            except Exception as err:  # the summary in the run's folder says so too
                log.error("run %s failed: %s: %s", cfg.out, type(err).__name__, err)
                summaries.append({"status": f"failed: {type(err).__name__}: {err}", "out": cfg.out})

    return server_app


def _written_summary(cfg: RunConfig, status: str) -> dict:
    """The summary the run wrote into its folder (``status`` alone if it could not write one)."""

    try:
        return {**json.loads((Path(cfg.out) / "summary.json").read_text()), "out": cfg.out}
    except (OSError, ValueError):
        return {"status": status, "out": cfg.out}


def _shutdown_ray() -> None:
    """Flower shuts Ray down when its engine ends; an interrupt can cut that short, so again here."""
    ray = sys.modules.get("ray")  # imported only if the simulation got as far as starting Ray
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@contextmanager
def stop_on_signals(stop: threading.Event, caught: list[int]) -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM set ``stop``: the server ends the run at its next message exchange
    (summary "interrupted") and Flower's engine then ends as after a last run. Clients still
    training get ``WIND_DOWN_SECONDS`` to finish (a repeated signal: none), then their actors are
    ended, since Ray cannot be shut down under a waiting engine. Flower's and Ray's complaints
    about those actors are not shown. Yields a function that installs the handlers again (after
    ``ray.init`` replaced them); the handlers from before are restored on exit. Outside the main
    thread (no signals there) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def on_signal(signum: int, frame) -> None:
        if stop.is_set():  # asked again: stop the clients now
            threading.Thread(target=end_client_actors, daemon=True).start()
            return
        stop.set()
        caught.append(signum)
        note = f"\nfedkron: {signal.Signals(signum).name}: stopping after the clients' current step\n"
        os.write(2, note.encode())  # not print(): a signal handler may interrupt a print
        logging.getLogger("flwr").setLevel(logging.CRITICAL)
        timer = threading.Timer(WIND_DOWN_SECONDS, end_client_actors)
        timer.daemon = True
        timer.start()

    def install() -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, on_signal)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    flwr_level = logging.getLogger("flwr").level
    install()
    try:
        yield install
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        logging.getLogger("flwr").setLevel(flwr_level)


def end_client_actors() -> None:
    """SIGKILL this process's Ray client actors (``ray::ClientAppActor``): a task waiting on one
    then fails at once and Flower's engine can end."""

    for pid in actor_processes(os.getpid(), "ray::ClientAppActor"):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # ended meanwhile


@contextmanager
def ray_reaper(cfg: RunConfig) -> Iterator[None]:
    """A watcher (:mod:`fedkron.sim.reaper`) that ends the Ray processes this simulation starts
    once it ends, even by ``kill -9``. Not when attaching to a cluster (``--ray-address``: its
    processes are not ours) or when Ray already runs in this process; Linux only (/proc)."""
    ray = sys.modules.get("ray")
    if cfg.ray_address or not sys.platform.startswith("linux") or (ray is not None and ray.is_initialized()):
        yield
        return
    watcher = subprocess.Popen(
        [sys.executable, "-m", "fedkron.sim.reaper", str(os.getpid())],
        stdin=subprocess.PIPE,
        start_new_session=True,  # a signal to this process group (Ctrl-C, killpg) does not end it
    )
    try:
        yield
    finally:
        watcher.stdin.close()  # tells it the simulation is over; it ends what Ray left running
        try:
            watcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            watcher.kill()


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
        raise RunFailed(f"{cfg.out}: {summary['status']}")
    return summary
