"""A throw-away Ray cluster of several raylets on 127.0.0.1, for tests of ``--ray-address``.

``ray stop`` would stop every Ray process of the user (other runs on this machine too), so this
stops only what it started: every process whose command line names its private temp dir (GCS,
raylets, monitors) and their children (the workers and actors the raylets forked).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    def __init__(self, nodes: int = 2, cpus_per_node: int = 1):
        self.nodes, self.cpus = nodes, cpus_per_node
        self.temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths are limited
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _ray_start(self, *args: str) -> None:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [
            "ray",
            "start",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            *args,
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")

    def __enter__(self) -> RayCluster:
        try:
            self._ray_start("--head", f"--port={self.port}", "--include-dashboard=false")
            for _ in range(self.nodes - 1):
                self._ray_start(f"--address={self.address}")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def processes(self) -> list[psutil.Process]:
        """This cluster's daemons (their command line names the temp dir) and all their children."""
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid not in mine and self.temp_dir in " ".join(p.info["cmdline"] or []):
                    found[p.pid] = p
                    found.update({c.pid: c for c in p.children(recursive=True) if c.pid not in mine})
            except psutil.Error:
                continue
        return list(found.values())

    def stop(self) -> None:
        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        if not self.processes():
            shutil.rmtree(self.temp_dir, ignore_errors=True)
