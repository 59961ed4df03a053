"""The Flower command lines of a deployment, secure by default.

Every function returns an argv list, so the CLI can print it for an edge machine, and tests and
benchmarks can run it as a subprocess: one place decides which flags a secure SuperLink,
SuperNode and ``flwr run`` get. ``insecure=True`` is the only way to drop TLS.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from fedkron.deploy.certs import TlsFiles

ISOLATIONS = ("subprocess", "process")


class DeployConfigError(ValueError):
    """A deployment option is missing or contradicts another."""


def superlink_command(
    *,
    host: str = "127.0.0.1",
    port: int = 9091,
    tls: TlsFiles | None = None,
    insecure: bool = False,
    node_auth: bool = True,
    database: str | None = None,
) -> list[str]:
    """``flower-superlink``: one HTTP port serves the Fleet, Control and ServerApp Runtime APIs."""
    cmd = ["flower-superlink", "--host", host, "--port", str(_port(port)), "--disable-runtime-dependency-installation"]
    if insecure:
        if node_auth:
            raise DeployConfigError("SuperNode authentication needs TLS: drop --insecure or use --no-node-auth")
        cmd.append("--insecure")
    else:
        if tls is None:
            raise DeployConfigError("a secure SuperLink needs TLS files (--certs DIR), or ask for --insecure")
        tls.check()
        cmd += [
            "--ssl-ca-certfile",
            str(tls.ca_cert),
            "--ssl-certfile",
            str(tls.server_cert),
            "--ssl-keyfile",
            str(tls.server_key),
        ]
    if node_auth:
        cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    return cmd


def _node_config(partition: tuple[int, int] | None, data_dir: str | None) -> dict[str, Any]:
    """The SuperNode's ``--node-config``: its partition of the shared data, or its own data folder."""
    node_config: dict[str, Any] = {}
    if partition is not None:
        pid, num = partition
        if not 0 <= pid < num:
            raise DeployConfigError(f"partition-id {pid} is outside [0, num-partitions={num})")
        node_config.update({"partition-id": pid, "num-partitions": num})
    if data_dir:
        if not Path(data_dir).is_dir():
            raise DeployConfigError(f"data-dir {data_dir!r} is not a folder")
        node_config["data-dir"] = str(Path(data_dir).resolve())
    if not node_config:
        raise DeployConfigError("a SuperNode needs a partition (--partition I N) or its own --data-dir")
    return node_config


def supernode_command(
    *,
    superlink: str,
    port: int,
    partition: tuple[int, int] | None = None,
    data_dir: str | None = None,
    root_certificates: str | Path | None = None,
    private_key: str | Path | None = None,
    insecure: bool = False,
    isolation: str = "process",
    max_retries: int | None = None,
    max_wait_time: float | None = None,
) -> list[str]:
    """``flower-supernode`` for one edge machine.

    ``partition`` = (partition id, number of partitions) of the shared task data; ``data_dir`` a
    folder of the node's own data (the node's value overrides the server's ``data-dir``).
    ``isolation="process"`` leaves the ClientApp to a long-lived worker (:mod:`warm_clientapp`),
    ``"subprocess"`` is Flower's default: a fresh ClientApp process per message.
    """
    if isolation not in ISOLATIONS:
        raise DeployConfigError(f"isolation must be one of {ISOLATIONS} (got {isolation!r})")
    node_config = _node_config(partition, data_dir)
    cmd = [
        "flower-supernode",
        "--superlink",
        superlink,
        "--port",
        str(_port(port)),
        "--isolation",
        isolation,
        "--node-config",
        format_config(node_config, quote='"'),
    ]
    if insecure:
        if private_key:
            raise DeployConfigError("SuperNode authentication needs TLS: drop --insecure or the private key")
        cmd.append("--insecure")
    else:
        if root_certificates is None:
            raise DeployConfigError(
                "a secure SuperNode needs the SuperLink's CA (--root-certificates ca.crt), or ask for --insecure"
            )
        cmd += ["--root-certificates", str(_existing(root_certificates))]
    if private_key:
        cmd += ["--auth-supernode-private-key", str(_existing(private_key))]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def warm_worker_command(
    *, runtime_api: str, parent_pid: int | None = None, preload: tuple[str, ...] = ("torch", "transformers")
) -> list[str]:
    """The long-lived ClientApp worker for a SuperNode started with ``--isolation process``.

    Run as a script file, not ``-m fedkron...``: the worker then imports the app from the FAB that
    ``flwr run`` shipped, not from whatever fedkron is installed beside it.
    """
    script = Path(__file__).with_name("warm_clientapp.py")
    cmd = [sys.executable, str(script), "--runtime-api-address", runtime_api]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    if preload:
        cmd += ["--preload", ",".join(preload)]
    return cmd


def run_command(
    *, connection: str, app: str | Path = ".", run_config: Mapping[str, Any] | None = None, stream: bool = True
) -> list[str]:
    """``flwr run APP CONNECTION``; ``--stream`` keeps it attached until the run ends."""
    cmd = ["flwr", "run", str(app), connection]
    if run_config:
        cmd += ["--run-config", format_config(run_config, quote="'")]
    if stream:
        cmd.append("--stream")
    return cmd


def format_config(values: Mapping[str, Any], quote: str) -> str:
    """``k=v`` pairs as Flower parses them (TOML values: strings quoted, booleans lower-case)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, (str, Path)):
            value = str(value)
            if "'" in value or '"' in value or "\n" in value:
                raise DeployConfigError(f"config value of {key!r} may not contain quotes: {value!r}")
            text = f"{quote}{value}{quote}"
        else:
            raise DeployConfigError(
                f"config value of {key!r} must be str, int, float or bool (got {type(value).__name__})"
            )
        parts.append(f"{key}={text}")
    return " ".join(parts)


def write_connection(
    flwr_home: str | Path,
    name: str,
    address: str,
    *,
    root_certificates: str | Path | None = None,
    insecure: bool = False,
    make_default: bool = False,
) -> Path:
    """Add or replace ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml`` (what ``flwr run`` reads)."""
    import tomli_w  # a Flower dependency

    if insecure == (root_certificates is not None):
        raise DeployConfigError("a connection is either secure (root certificates) or --insecure, not both/neither")
    path = Path(flwr_home) / "config.toml"
    doc = tomllib.loads(path.read_text()) if path.is_file() else {}
    links = doc.setdefault("superlink", {})
    entry: dict[str, Any] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(_existing(root_certificates))  # Flower wants an absolute path
    links[name] = entry
    if make_default or "default" not in links:
        links["default"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(doc))
    return path


def shell_line(argv: list[str], env: Mapping[str, str] | None = None) -> str:
    """One copy-pasteable shell line (with the environment assignments in front)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return (prefix + " " if prefix else "") + shlex.join(argv)


def _port(port: int) -> int:
    if not 0 < int(port) < 65536:
        raise DeployConfigError(f"port must be in 1..65535 (got {port})")
    return int(port)


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"fedkron.deploy: file {p} not found")
    return p
