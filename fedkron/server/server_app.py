"""The Flower ServerApp (``flwr run .`` and deployment): run config → :func:`run_federation`."""

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedkron.logs import quiet_third_party
from fedkron.runconfig.fields import RunConfig
from fedkron.server.federation import run_federation
from fedkron.server.preflight import clear_run, preflight
from fedkron.server.progress import format_round

quiet_third_party()  # an entry point: every simulated client (Ray actor) imports this module

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read ``[tool.flwr.app.config]`` (+ ``--run-config``) and run the federation."""
    cfg = RunConfig.from_mapping(dict(context.run_config)).resolved()
    preflight(cfg)
    if cfg.overwrite and not cfg.resume:
        clear_run(Path(cfg.out))
    run_federation(grid, cfg, progress=_print_progress, resume=cfg.resume)


def _print_progress(row: dict) -> None:

    print(format_round(row), flush=True)
