"""Stopping a run on request (SIGTERM / SIGINT in simulation) at the next message exchange.

The ServerApp runs in its own thread, where no signal arrives; the process that catches the signal
sets a :class:`threading.Event`, and :class:`StoppableGrid` raises :class:`RunInterrupted` at the
server's next push or pull, so the round loop unwinds through the normal ``finally`` (summary
"interrupted", ledger written) instead of waiting out the round's timeout against stopped clients.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid


class RunInterrupted(Exception):
    """The run was asked to stop (a signal); what it measured so far is kept."""

    def __init__(self, message: str = "interrupted by a signal"):
        super().__init__(message)


class StoppableGrid:
    """``grid`` that refuses to send or wait any more once ``stop`` is set. Everything else is
    delegated unchanged (it sits under the ledger's Grid, which only pushes, pulls and asks for
    nodes)."""

    def __init__(self, grid: Grid, stop: threading.Event):
        self.grid, self.stop = grid, stop

    def _check(self) -> None:
        if self.stop.is_set():
            raise RunInterrupted()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self.grid.pull_messages(message_ids)

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self.grid.get_node_ids()

    def __getattr__(self, name: str):
        return getattr(self.grid, name)
