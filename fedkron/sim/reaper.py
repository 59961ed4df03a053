"""Ray's helper processes end with the simulation that started them, even after ``kill -9``.

Ray ties its GCS server and raylet to the driver (the kernel kills them when it dies), but the
raylet's DashboardAgent and RuntimeEnvAgent first try to tell the (dead) GCS and wait up to 60 s
for it, orphaned. This watcher runs beside the driver in its own session (a signal to the driver's
process group does not reach it): while the driver lives it notes every Ray process below the
driver; when the pipe from the driver closes (a normal end, or the kernel closing it at the
driver's death), it gives them a moment to end by themselves and then kills those still running.
Only processes it saw below the driver, with the same start time, are ever signalled.

Run as ``python -m fedkron.sim.reaper DRIVER_PID`` with the pipe as stdin; Linux only (/proc).
Imports nothing heavy: it starts in a fraction of a second.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

POLL_SECONDS = 0.5
GRACE_SECONDS = 2.0


def _table() -> dict[int, tuple[int, int]]:
    """pid → (parent pid, start time in clock ticks) of every process that can be read now."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended while listed
        table[int(entry)] = (int(fields[1]), int(fields[19]))
    return table


def _is_ray(pid: int) -> bool:
    """Ray's own processes: its binaries and scripts live under .../ray/, its workers are named ray::."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ")
    except OSError:
        return False
    return cmdline.startswith(b"ray::") or b"/ray/" in cmdline


def ray_processes_below(driver: int, table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """pid → start time of each process below ``driver`` that is a Ray process or runs under one."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [(pid, False) for pid in children.get(driver, [])]
    while todo:
        pid, under_ray = todo.pop()
        under_ray = under_ray or _is_ray(pid)
        if under_ray:
            found[pid] = table[pid][1]
        todo += [(child, under_ray) for child in children.get(pid, [])]
    return found


def actor_processes(driver: int, title: str) -> list[int]:
    """The processes below ``driver`` whose command line starts with ``title`` (a Ray actor's name)."""
    found = []
    for pid in ray_processes_below(driver, _table()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if fh.read().startswith(title.encode()):
                    found.append(pid)
        except OSError:
            continue
    return found


def _alive(seen: dict[int, int]) -> dict[int, int]:
    """Those of ``seen`` still running (same pid, same start time, not a zombie awaiting its reaper)."""
    table = _table()
    return {pid: start for pid, start in seen.items() if table.get(pid, (0, -1))[1] == start and not _zombie(pid)}


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def watch(driver: int, pipe: int = 0) -> None:
    """Note the driver's Ray processes until ``pipe`` closes or the driver is gone (a forked child
    may hold the pipe open), then end those that outlive it."""
    seen: dict[int, int] = {}
    born = _table().get(driver, (0, None))[1]
    while True:
        ready, _, _ = select.select([pipe], [], [], POLL_SECONDS)
        if ready and not os.read(pipe, 4096):
            break  # the driver closed the pipe or died
        table = _table()
        if table.get(driver, (0, None))[1] != born:
            break
        seen.update(ray_processes_below(driver, table))
    deadline = time.monotonic() + GRACE_SECONDS
    left = _alive(seen)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _alive(left)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # ended meanwhile


if __name__ == "__main__":
    watch(int(sys.argv[1]))
