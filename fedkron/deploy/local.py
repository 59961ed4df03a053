"""A whole deployment on this machine's loopback: SuperLink, SuperNodes, ``flwr run``.

For tests, the overhead benchmark and ``fedkron deploy local`` (try the edge path before taking it
to real machines). Every piece is what an edge machine runs: the commands of
:mod:`fedkron.deploy.commands`, TLS files from :mod:`certs`, node keys from :mod:`auth`; only the
addresses are 127.0.0.1 and the ports free ones.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedkron.deploy.auth import NodeKey, make_node_keys, register_command
from fedkron.deploy.certs import TlsFiles, make_certificates
from fedkron.deploy.commands import (
    run_command,
    superlink_command,
    supernode_command,
    warm_worker_command,
    write_connection,
)
from fedkron.deploy.processes import ManagedProcess, Processes, flower_env, free_port

HOST = "127.0.0.1"
APP_DIR = Path(__file__).resolve().parents[2]  # the repository root holds pyproject.toml (the app)


@dataclass
class Node:
    """One SuperNode and, with ``--isolation process``, its warm ClientApp worker."""

    name: str
    supernode: ManagedProcess
    worker: ManagedProcess | None

    def kill(self) -> None:
        """Crash the node: SIGKILL, no goodbye to the SuperLink."""
        for proc in (self.worker, self.supernode):
            if proc is not None:
                proc.kill()

    @property
    def alive(self) -> bool:
        return self.supernode.alive and (self.worker is None or self.worker.alive)


class LocalFederation:
    """Start pieces one by one; ``with`` (or :meth:`close`) stops every process it started."""

    def __init__(
        self, root: str | Path, *, secure: bool = True, node_auth: bool = True, connection: str = "local-edge"
    ):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.secure, self.node_auth, self.connection = secure, node_auth and secure, connection
        self.env = flower_env(self.root / "flwr-home")
        self.procs = Processes()
        self.port = free_port(HOST)
        self.address = f"{HOST}:{self.port}"
        self.tls: TlsFiles | None = (
            make_certificates(self.root / "certs", [HOST, "localhost"], force=True) if secure else None
        )  # its own root
        self.nodes: dict[str, Node] = {}
        self.superlink: ManagedProcess | None = None

    # --- processes --------------------------------------------------------------------------
    def start_superlink(self, timeout: float = 90) -> ManagedProcess:
        write_connection(
            self.env["FLWR_HOME"],
            self.connection,
            self.address,
            root_certificates=self.tls.ca_cert if self.tls else None,
            insecure=not self.secure,
            make_default=True,
        )
        cmd = superlink_command(
            host=HOST, port=self.port, tls=self.tls, insecure=not self.secure, node_auth=self.node_auth
        )
        self.superlink = self.procs.start(cmd, self.root / "superlink.log", self.env)
        self.superlink.wait_for_log(r"Uvicorn running on", timeout)
        return self.superlink

    def make_keys(self, names: list[str], register: bool = True) -> list[NodeKey]:
        keys = make_node_keys(self.root / "keys", names, force=True)
        if register:
            for key in keys:
                self.flwr(register_command(key.public, self.connection))
        return keys

    def start_supernode(
        self,
        name: str,
        partition: tuple[int, int],
        *,
        key: NodeKey | None = None,
        warm: bool = True,
        root_certificates: Path | None = None,
        **extra: Any,
    ) -> Node:
        """A SuperNode (+ warm worker when ``warm``); ``root_certificates`` overrides the CA (tests)."""
        if name in self.nodes and self.nodes[name].alive:
            raise ValueError(f"fedkron.deploy.local: SuperNode {name!r} is already running")
        runtime_port = free_port(HOST)
        cmd = supernode_command(
            superlink=self.address,
            port=runtime_port,
            partition=partition,
            root_certificates=root_certificates or (self.tls.ca_cert if self.tls else None),
            private_key=key.private if key else None,
            insecure=not self.secure,
            isolation="process" if warm else "subprocess",
            **extra,
        )
        supernode = self.procs.start(cmd, self.root / f"supernode-{name}.log", self.env)
        worker = None
        if warm:
            worker = self.procs.start(
                warm_worker_command(runtime_api=f"{HOST}:{runtime_port}", parent_pid=supernode.pid),
                self.root / f"worker-{name}.log",
                self.env,
            )
        node = self.nodes[name] = Node(name, supernode, worker)
        return node

    def wait_connected(self, names: list[str], timeout: float = 90) -> None:
        for name in names:
            self.nodes[name].supernode.wait_for_log(r"SuperNode ID: \d+", timeout)

    # --- flwr CLI ---------------------------------------------------------------------------
    def flwr(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        res = subprocess.run(argv, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:3])} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
            )
        return res

    def node_ids(self) -> dict[int, str]:
        """Node id → status ('online', 'offline', 'registered', ...) as the SuperLink lists them."""
        out = self.flwr(["flwr", "supernode", "list", self.connection, "--format", "json"]).stdout
        rows = json.loads(out[out.index("{") :])["nodes"]
        return {int(r["node-id"]): r["status"] for r in rows}

    def start_run(self, run_config: Mapping[str, Any], log_name: str = "run.log") -> ManagedProcess:
        """``flwr run . CONNECTION --stream`` in the background; the results folder fills as it goes."""
        cmd = run_command(connection=self.connection, app=APP_DIR, run_config=run_config, stream=True)
        return self.procs.start(cmd, self.root / log_name, self.env, cwd=APP_DIR)

    def run(self, run_config: Mapping[str, Any], timeout: float = 300, log_name: str = "run.log") -> dict:
        """Run the app to the end; return ``summary.json`` of its results folder (``out`` must be absolute)."""
        out = Path(str(run_config["out"]))
        if not out.is_absolute():
            raise ValueError(f"fedkron.deploy.local: run config 'out' must be an absolute path (got {out})")
        proc = self.start_run(run_config, log_name)
        wait_for_summary(out, proc, timeout)
        return json.loads((out / "summary.json").read_text())

    def close(self) -> None:
        self.procs.stop_all()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for_summary(out: Path, proc: ManagedProcess, timeout: float) -> None:
    """``summary.json`` is written last, completed or failed; ``flwr run --stream`` may outlive it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out / "summary.json").is_file():
            return
        if not proc.alive and proc.popen.returncode != 0:
            raise RuntimeError(f"flwr run exited with {proc.popen.returncode}:\n{proc.log()[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"no {out}/summary.json after {timeout:.0f} s; flwr run log tail:\n{proc.log()[-3000:]}")


def wait_for_round(out: Path, server_round: int, timeout: float) -> dict:
    """Block until ``metrics.jsonl`` has the row of ``server_round``; return it."""
    deadline = time.monotonic() + timeout
    path = Path(out) / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row["round"] == server_round:
                    return row
        time.sleep(0.2)
    raise TimeoutError(f"round {server_round} never reached {path} within {timeout:.0f} s")
