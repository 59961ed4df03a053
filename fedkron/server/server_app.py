"""The Flower ServerApp (``flwr run .`` and deployment): run config → :func:`run_federation`."""

from pathlib import Path

from fedkron.logs import quiet_third_party

# An entry point (the ServerApp process). Quieted before the imports below, which load bitsandbytes
# and torch's compiler (their import-time notices are what it hides).
quiet_third_party()

from flwr.app import Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fedkron.runconfig.fields import RunConfig  # noqa: E402
from fedkron.server.federation import run_federation  # noqa: E402
from fedkron.server.preflight import clear_run, preflight  # noqa: E402
from fedkron.server.progress import format_round  # noqa: E402

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
