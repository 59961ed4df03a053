"""The Flower ServerApp (``flwr run .`` and deployment): run config → :func:`run_federation`."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedkron.config import RunConfig
from fedkron.server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Read ``[tool.flwr.app.config]`` (+ ``--run-config``) and run the federation."""
    cfg = RunConfig.from_mapping(dict(context.run_config))
    run_federation(grid, cfg, progress=_print_progress, resume=cfg.resume)


def _print_progress(row: dict) -> None:
    from fedkron.server.progress import format_round

    print(format_round(row), flush=True)
