"""``fedkron deploy superlink|supernode`` take their processes down with them: a stop signal is
forwarded (SIGKILL after the grace period), and a SIGKILLed ``fedkron deploy`` leaves no child behind.

First the supervisor with small Python children (a second or two each), then the real commands on
127.0.0.1. Every process a test starts is SIGKILLed by PID in the finalizer if still alive.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")  # a dependency of the deploy package (processes.py)

ROOT = Path(__file__).resolve().parents[1]
needs_flower = pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower CLIs not on PATH")


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _survivors(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in procs):
            return []
        time.sleep(0.1)
    return [p for p in procs if _alive(p)]


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline()[:3])}")
        except psutil.Error:
            out.append(str(p.pid))
    return out


@pytest.fixture
def spawn(tmp_path):
    """Start a command (fedkron's PYTHONPATH, Flower env); SIGKILL every process seen in its tree."""
    seen: list[psutil.Process] = []
    started: list[subprocess.Popen] = []
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }

    def start(argv: list[str], log_name: str) -> subprocess.Popen:
        log = open(tmp_path / log_name, "wb")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path, env=env
        )
        log.close()
        started.append(proc)
        return proc

    def remember(procs: list[psutil.Process]) -> list[psutil.Process]:
        seen.extend(procs)
        return procs

    start.remember = remember
    yield start
    for proc in started:
        remember(_tree(proc.pid))
    for p in seen:
        if _alive(p):
            try:
                p.kill()  # by PID; psutil checks it is still the same process
            except psutil.NoSuchProcess:
                pass
    for proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _wait_for_tree(pid: int, names: list[str], timeout: float, log: Path) -> list[psutil.Process]:
    """Block until ``pid`` has a descendant whose command line mentions each of ``names``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree = _tree(pid)
        cmdlines = []
        for p in tree[1:]:
            try:
                cmdlines.append(" ".join(p.cmdline()))
            except psutil.Error:
                pass
        if all(any(n in c for c in cmdlines) for n in names):
            return tree
        time.sleep(0.2)
    pytest.fail(f"no {names} under PID {pid} after {timeout:.0f} s; log:\n{log.read_text()[-3000:]}")


# --- the supervisor, with small children ------------------------------------------------------
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    out, mode = sys.argv[1], sys.argv[2]
    def record(sig, _):
        with open(out, "a") as fh:
            fh.write(signal.Signals(sig).name + "\\n")
        if mode != "stubborn":
            sys.exit(0)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, record)
    open(out + ".ready", "w").close()
    if mode == "fail":  # once the sibling can record its signal
        while not os.path.exists(os.path.join(os.path.dirname(out), "child1.ready")):
            time.sleep(0.05)
        sys.exit(3)
    while True:
        time.sleep(0.05)
""")

DRIVER = textwrap.dedent("""
    import sys
    from fedkron.deploy.supervise import Supervisor
    folder, grace, modes = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
    with Supervisor(grace) as sup:
        for i, mode in enumerate(modes):
            sup.start(f"child {i}", [sys.executable, "-c", CHILD, f"{folder}/child{i}", mode], None)
        status = sup.wait()
    sys.exit(status)
""").replace("CHILD", repr(CHILD))


def _driver(spawn, tmp_path, grace: float, *modes: str) -> tuple[subprocess.Popen, list[psutil.Process]]:
    proc = spawn([sys.executable, "-c", DRIVER, str(tmp_path), str(grace), *modes], "driver.log")
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"child{i}.ready").exists() for i in range(len(modes))):
        assert proc.poll() is None or "fail" in modes, (tmp_path / "driver.log").read_text()
        assert time.monotonic() < deadline, "children never started"
        time.sleep(0.05)
    return proc, spawn.remember(_tree(proc.pid))


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, forwarded", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT"), (signal.SIGHUP, "SIGTERM")]
)
def test_stop_signal_is_forwarded_and_the_supervisor_dies_of_it(spawn, tmp_path, sig, forwarded):
    driver, tree = _driver(spawn, tmp_path, 5.0, "polite", "polite")
    assert len(tree) == 3
    driver.send_signal(sig)
    assert driver.wait(timeout=15) == -sig  # ends by the same signal: a clean stop to systemd
    assert _survivors(tree, 2) == []
    for i in range(2):
        assert (tmp_path / f"child{i}").read_text().split() == [forwarded]


@pytest.mark.slow
def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period(spawn, tmp_path):
    driver, tree = _driver(spawn, tmp_path, 1.0, "stubborn", "polite")
    t0 = time.monotonic()
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(timeout=15) == -signal.SIGTERM
    took = time.monotonic() - t0
    assert _survivors(tree, 1) == []
    assert 0.9 < took < 14, took  # waited the 1 s grace; the upper bound only guards a hang (loaded CI)
    assert (tmp_path / "child0").read_text().split() == ["SIGTERM"]  # asked first, then killed


@pytest.mark.slow
def test_a_child_that_exits_stops_the_others_and_sets_the_status(spawn, tmp_path):
    driver, tree = _driver(spawn, tmp_path, 5.0, "fail", "polite")
    assert driver.wait(timeout=30) == 3
    assert _survivors(tree, 2) == []
    assert (tmp_path / "child1").read_text().split() == ["SIGTERM"]
    assert "child 0 (PID" in (tmp_path / "driver.log").read_text()


@pytest.mark.slow
def test_children_get_sigterm_when_the_supervisor_is_sigkilled(spawn, tmp_path):
    driver, tree = _driver(spawn, tmp_path, 5.0, "polite", "polite")
    driver.kill()
    assert driver.wait(timeout=10) == -signal.SIGKILL
    assert _survivors(tree, 3) == [], _describe(tree)
    for i in range(2):  # the kernel's parent-death signal, not a leftover SIGKILL
        assert (tmp_path / f"child{i}").read_text().split() == ["SIGTERM"]


# --- the real commands ----------------------------------------------------------------------------
def _federation(spawn, tmp_path) -> tuple[subprocess.Popen, list, subprocess.Popen, list]:
    """``fedkron deploy superlink`` and a connected ``fedkron deploy supernode`` (warm worker)."""
    from fedkron.deploy.processes import free_port

    link_port, node_port = free_port(), free_port()
    fedkron = [sys.executable, "-m", "fedkron", "deploy"]
    link = spawn(
        [*fedkron, "superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port)], "superlink.log"
    )
    link_tree = spawn.remember(
        _wait_for_tree(link.pid, ["flower-superlink", "flower-superexec"], 90, tmp_path / "superlink.log")
    )
    node = spawn(
        [
            *fedkron,
            "supernode",
            "--superlink",
            f"127.0.0.1:{link_port}",
            "--partition",
            "0",
            "2",
            "--insecure",
            "--port",
            str(node_port),
        ],
        "supernode-cli.log",
    )
    node_tree = spawn.remember(
        _wait_for_tree(node.pid, ["flower-supernode", "warm_clientapp.py"], 90, tmp_path / "supernode-cli.log")
    )
    log = tmp_path / f"supernode-{node_port}.log"
    deadline = time.monotonic() + 90
    while "SuperNode ID" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"SuperNode never connected; log:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    return link, link_tree, node, node_tree


@needs_flower
@pytest.mark.deploy
@pytest.mark.slow
def test_sigterm_stops_supernode_and_superlink_with_all_their_processes(spawn, tmp_path):
    link, link_tree, node, node_tree = _federation(spawn, tmp_path)
    assert len(node_tree) == 3 and len(link_tree) == 3, (_describe(node_tree), _describe(link_tree))

    node.send_signal(signal.SIGTERM)  # what systemd and `docker stop` send
    assert node.wait(timeout=30) == -signal.SIGTERM
    assert _survivors(node_tree, 15) == [], _describe(node_tree)
    assert "SuperNode terminated gracefully" in next(tmp_path.glob("supernode-[0-9]*.log")).read_text()

    link.send_signal(signal.SIGTERM)
    assert link.wait(timeout=30) == -signal.SIGTERM
    assert _survivors(link_tree, 15) == [], _describe(link_tree)


@needs_flower
@pytest.mark.deploy
@pytest.mark.slow
def test_sigkilled_fedkron_deploy_leaves_no_flower_process_behind(spawn, tmp_path):
    link, link_tree, node, node_tree = _federation(spawn, tmp_path)

    t0 = time.monotonic()
    node.kill()
    node.wait(timeout=10)
    assert _survivors(node_tree, 10) == [], _describe(node_tree)
    took_node = time.monotonic() - t0

    t0 = time.monotonic()
    link.kill()
    link.wait(timeout=10)
    assert _survivors(link_tree, 10) == [], _describe(link_tree)
    print(f"SIGKILL → tree gone: supernode {took_node:.1f} s, superlink {time.monotonic() - t0:.1f} s")
