"""Quiet the third-party notices every process would repeat (each Ray actor, each ClientApp
process) about things that work as intended here. Called by the entry points (the CLI, the
ClientApp and ServerApp modules), never on ``import fedkron``: a library leaves its host's
logging and warning filters alone. ``--verbose`` (``$FEDKRON_VERBOSE``) shows everything."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "FEDKRON_VERBOSE"  # set by --verbose; inherited by Ray actors and ClientApp processes


class _DropExpected(logging.Filter):
    """Flower's notice that it stops a simulation's actors, repeated by every actor at the end."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Manually terminating" not in record.getMessage()


_DROP_EXPECTED = _DropExpected()


def quiet_third_party() -> None:
    """Hide the known, harmless third-party notices unless ``$FEDKRON_VERBOSE`` is set (idempotent)."""
    if os.environ.get(VERBOSE_ENV):
        return
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # optional CPU kernel absent
    flwr_logger = logging.getLogger("flwr")
    if _DROP_EXPECTED not in flwr_logger.filters:
        flwr_logger.addFilter(_DROP_EXPECTED)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated", category=DeprecationWarning)


@contextlib.contextmanager
def progress_bars_hidden() -> Iterator[None]:
    """Unless ``$FEDKRON_VERBOSE``: the block's writes to stderr are dropped. For third-party calls
    that draw a tqdm bar with no switch of their own (flwr-datasets' ``NaturalIdPartitioner``, the
    GGUF reader), which every Ray actor would print. tqdm reads ``TQDM_DISABLE`` only when it is
    imported, so the bar itself cannot be turned off later; errors still raise as exceptions."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield
