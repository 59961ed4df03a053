"""Start and stop Flower processes on this machine, and only those.

Each process starts in its own session (its PID is its process group), logs to a file, and is
stopped by PID: SIGTERM to its group and to every descendant it spawned (Flower's SuperExec and
app processes detach into sessions of their own), then SIGKILL for whatever is left.
``die_with_parent`` asks the kernel to signal the child when its starter dies, even by SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil  # a dependency of peft/accelerate: process trees without parsing /proc

FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def flower_env(flwr_home: str | Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment plus what every Flower process here must have (no telemetry, no uv installs)."""
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env.update(extra or {})
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn``: the child receives ``sig`` when the process that started it dies (Linux).

    The kernel sends it however the parent dies, SIGKILL and OOM kill included, which no handler in
    the parent can do; it survives the child's ``exec``. Linux ties it to the *thread* that started
    the child, so start such children from a thread that lives as long as the process (the main
    one). ``None`` on other systems (the children's own parent-PID polling remains).
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: nothing to load after fork
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody will signal us
            os._exit(1)

    return preexec


class ManagedProcess:
    """One started process with its log file; :meth:`stop` ends it and its descendants.

    ``log_path=None`` leaves stdout/stderr to this process's (a foreground SuperLink's journal).
    """

    def __init__(
        self,
        argv: list[str],
        log_path: str | Path | None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        *,
        die_with_parent: bool = False,
    ):
        self.argv = list(argv)
        self.log_path = Path(log_path) if log_path is not None else None
        self._log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log else None,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=parent_death_signal() if die_with_parent else None,
        )
        self.pid = self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match:
        """Block until ``pattern`` (a regex) appears in the log; raise TimeoutError with the log tail."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := rx.search(self.log()):
                return m
            if not self.alive:
                break
            time.sleep(0.2)
        if m := rx.search(self.log()):
            return m
        state = "running" if self.alive else f"exited with {self.popen.returncode}"
        raise TimeoutError(
            f"{self.argv[0]} ({state}) never logged {pattern!r} within {timeout:.0f} s; log tail:\n{self.log()[-3000:]}"
        )

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL, as a crash would: no goodbye to the SuperLink."""
        self.signal_tree(signal.SIGKILL, self.descendants())
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 8.0) -> None:
        children = self.descendants()
        self.signal_tree(signal.SIGTERM, children)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(children, timeout=2)
        self.signal_tree(signal.SIGKILL, alive)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.close_log()

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()

    def signal_tree(self, sig: int, children: list[psutil.Process]) -> None:
        """``sig`` once to each process of this one's group and of ``children`` (descendants, listed
        beforehand, maybe this process too; those outside its group are signalled one by one)."""
        try:
            os.killpg(self.pid, sig)  # pgid == pid: started with start_new_session
            group_hit = True
        except (ProcessLookupError, PermissionError):
            group_hit = False
        for child in children:
            try:
                if group_hit and os.getpgid(child.pid) == self.pid:
                    continue  # the group signal reached it: a second SIGTERM can cut a graceful exit short
                child.send_signal(sig)
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass


class Processes:
    """The processes a test, benchmark or CLI command started; ``with`` stops them all, LIFO."""

    def __init__(self) -> None:
        self.started: list[ManagedProcess] = []

    def start(
        self,
        argv: list[str],
        log_path: str | Path | None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        *,
        die_with_parent: bool = False,
    ) -> ManagedProcess:
        proc = ManagedProcess(argv, log_path, env, cwd, die_with_parent=die_with_parent)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
