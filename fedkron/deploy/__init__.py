"""Deployment on Flower's SuperLink/SuperNodes: the simulation's ServerApp and ClientApp, unchanged.

certs.py           a CA and a SuperLink certificate with the right subject names (TLS)
auth.py            SuperNode key pairs and ``flwr supernode register`` (node authentication)
keyfiles.py        atomic, owner-only key writes; no symlinks, no replacing without ``--force``
commands.py        the SuperLink / SuperNode / ``flwr run`` command lines, secure by default
warm_clientapp.py  a long-lived ClientApp process per SuperNode (``--isolation process``)
processes.py       start/stop those processes by PID
supervise.py       ``deploy superlink|supernode``: signals forwarded, children die with it
local.py           a whole deployment on loopback (tests, benchmark, trying it out)
cli.py             ``fedkron deploy ...``
"""

from fedkron.deploy.auth import NodeKey, make_node_keys, register_command
from fedkron.deploy.certs import TlsFiles, make_certificates, subject_names
from fedkron.deploy.cli import deploy_main
from fedkron.deploy.commands import (
    DeployConfigError,
    format_config,
    run_command,
    superlink_command,
    supernode_command,
    warm_worker_command,
    write_connection,
)
from fedkron.deploy.keyfiles import KeyFileError

__all__ = [
    "DeployConfigError",
    "KeyFileError",
    "NodeKey",
    "TlsFiles",
    "deploy_main",
    "format_config",
    "make_certificates",
    "make_node_keys",
    "register_command",
    "run_command",
    "subject_names",
    "superlink_command",
    "supernode_command",
    "warm_worker_command",
    "write_connection",
]
