"""``fedkron deploy superlink|supernode`` and the Flower processes it starts live and die together.

systemd and Docker stop a service with SIGTERM to its main process (then SIGKILL). Python's default
SIGTERM action ends the process at once, without stopping the children it started in sessions of
their own: ``flower-supernode`` and the warm ClientApp worker were left running, still connected.
Here the stop signals (SIGTERM, SIGINT, SIGHUP) are caught and forwarded to every child and its
descendants, which get ``grace`` seconds to exit before SIGKILL; then this process ends by the same
signal, which is how systemd tells a clean stop. If this process itself is SIGKILLed, the kernel
sends each child SIGTERM (``PR_SET_PDEATHSIG``, see :func:`processes.parent_death_signal`), and
Flower's own children follow their parents (``--parent-pid``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

from fedkron.deploy.processes import ManagedProcess

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Flower handles SIGINT/SIGTERM (graceful exit, the SuperNode says goodbye to the SuperLink) but not
# SIGHUP, whose default action would skip that: a hang-up is passed on as SIGTERM.
FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGINT: signal.SIGINT, signal.SIGHUP: signal.SIGTERM}
DEFAULT_GRACE = 8.0  # under Docker's 10 s stop timeout, so the children's SIGKILL is ours


class Supervisor:
    """``with Supervisor() as sup: sup.start(...); status = sup.wait()``; exiting stops every child."""

    def __init__(self, grace: float = DEFAULT_GRACE, poll: float = 0.2):
        if grace < 0:
            raise ValueError(f"fedkron.deploy.supervise: grace must be ≥ 0 seconds (got {grace})")
        self.grace, self.poll = grace, poll
        self.procs: list[tuple[str, ManagedProcess]] = []
        self.received: int | None = None
        self._signals = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Supervisor:
        for sig in STOP_SIGNALS:  # before any child exists: no window where a stop leaves one behind
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, _frame) -> None:
        self._signals += 1
        if self.received is None:
            self.received = signum

    def start(
        self, label: str, argv: list[str], log_path: str | Path | None, env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        proc = ManagedProcess(argv, log_path, env, die_with_parent=True)
        self.procs.append((label, proc))
        return proc

    def wait(self) -> int:
        """Block until a stop signal arrives or any child exits; the exit status to report."""
        while self.received is None:
            for label, proc in self.procs:
                code = proc.popen.poll()
                if code is not None:
                    where = f"; log: {proc.log_path}" if proc.log_path else ""
                    print(
                        f"fedkron deploy: {label} (PID {proc.pid}) exited with {_describe(code)}{where}; "
                        "stopping the rest",
                        file=sys.stderr,
                        flush=True,
                    )
                    return _status(code, main=proc is self.procs[0][1])
            time.sleep(self.poll)
        return 128 + self.received

    def stop(self) -> None:
        """Forward the stop signal to every child and descendant; SIGKILL what outlives ``grace``."""
        sig = FORWARDED.get(self.received, signal.SIGTERM)
        trees = []
        for _, proc in self.procs:  # list descendants first: once signalled they may re-parent
            tree = proc.descendants()
            try:
                tree.insert(0, psutil.Process(proc.pid))
            except psutil.NoSuchProcess:
                pass
            trees.append(tree)
        for (_, proc), tree in zip(self.procs, trees):
            proc.signal_tree(sig, tree)
        t0 = time.monotonic()
        deadline = t0 + self.grace
        while time.monotonic() < deadline and self._signals <= 1:  # a second Ctrl-C: kill now
            for _, proc in self.procs:
                proc.popen.poll()  # reap our own children
            if not any(_alive(p) for tree in trees for p in tree):
                break
            time.sleep(0.05)
        for (_, proc), tree in zip(self.procs, trees):
            leftovers = [p for p in tree if _alive(p)]
            if leftovers:
                why = "a second stop signal" if self._signals > 1 else f"the {self.grace:g} s grace period"
                print(
                    f"fedkron deploy: SIGKILL to {[p.pid for p in leftovers]} after {why} "
                    f"({time.monotonic() - t0:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                proc.signal_tree(signal.SIGKILL, leftovers)
            try:
                proc.popen.wait(timeout=5)
            except Exception:  # noqa: BLE001 - unkillable (D state): nothing more to do here
                pass
            proc.close_log()

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        if self.received is not None:  # end the way we were asked to: by that signal
            signal.signal(self.received, signal.SIG_DFL)
            os.kill(os.getpid(), self.received)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _describe(code: int) -> str:
    if code >= 0:
        return f"code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def _status(code: int, main: bool) -> int:
    """A child killed by a signal reads as 128+N; a helper that stops, even with 0, is a failure."""
    if code < 0:
        return 128 - code
    return code if (code or main) else 1
