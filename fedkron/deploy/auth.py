"""SuperNode authentication, Flower's own way: each SuperNode holds an EC (NIST P-384) key pair
in OpenSSH format; the operator registers the *public* key with ``flwr supernode register``; the
SuperLink, started with ``--enable-supernode-auth``, then accepts only nodes that sign with a
registered key (``flower-supernode --auth-supernode-private-key``). It needs TLS.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's key files: ``private`` stays on the node, ``public`` goes to the operator."""

    name: str
    private: Path
    public: Path


def make_node_keys(folder: str | Path, names: list[str] | tuple[str, ...]) -> list[NodeKey]:
    """Write ``<name>`` (private, mode 600) and ``<name>.pub`` for each SuperNode name."""
    if not names:
        raise ValueError("fedkron.deploy.auth: give at least one SuperNode name")
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"fedkron.deploy.auth: SuperNode names must be letters, digits, '_', '.', '-' (got {bad})")
    if len(set(names)) != len(names):
        raise ValueError(f"fedkron.deploy.auth: SuperNode names repeat: {list(names)}")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for name in names:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
        node = NodeKey(name, folder / name, folder / f"{name}.pub")
        fd = os.open(node.private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private)
        node.public.write_bytes(public + f" fedkron-{name}\n".encode())
        keys.append(node)
    return keys


def register_command(public_key: str | Path, connection: str) -> list[str]:
    """``flwr supernode register`` for one public key on a SuperLink connection of ``$FLWR_HOME``."""
    path = Path(public_key)
    if not path.is_file():
        raise FileNotFoundError(f"fedkron.deploy.auth: public key {path} not found")
    if path.suffix != ".pub":
        raise ValueError(f"fedkron.deploy.auth: register the public key (*.pub), not {path.name}")
    return ["flwr", "supernode", "register", str(path.resolve()), connection, "--format", "json"]
