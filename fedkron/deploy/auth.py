"""SuperNode authentication, Flower's own way: each SuperNode holds an EC (NIST P-384) key pair
in OpenSSH format; the operator registers the *public* key with ``flwr supernode register``; the
SuperLink, started with ``--enable-supernode-auth``, then accepts only nodes that sign with a
registered key (``flower-supernode --auth-supernode-private-key``). It needs TLS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedkron.deploy.keyfiles import check_targets, write_private, write_public

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's key files: ``private`` stays on the node, ``public`` goes to the operator."""

    name: str
    private: Path
    public: Path


def make_node_keys(folder: str | Path, names: list[str] | tuple[str, ...], force: bool = False) -> list[NodeKey]:
    """Write ``<name>`` (private, mode 600) and ``<name>.pub`` for each SuperNode name.

    An existing key pair is replaced only with ``force`` (the old public key stays registered with
    the SuperLink until removed there); a symlink at a key path is always refused.
    """
    if not names:
        raise ValueError("fedkron.deploy.auth: give at least one SuperNode name")
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise ValueError(f"fedkron.deploy.auth: SuperNode names must be letters, digits, '_', '.', '-' (got {bad})")
    if len(set(names)) != len(names):
        raise ValueError(f"fedkron.deploy.auth: SuperNode names repeat: {list(names)}")
    folder = Path(folder).resolve()
    nodes = [NodeKey(n, folder / n, folder / f"{n}.pub") for n in names]
    check_targets(
        [p for node in nodes for p in (node.private, node.public)],
        force=force,
        what="fedkron.deploy.auth",
        hint="register the new public key; the old one stays registered until removed",
    )
    folder.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        write_private(node.private, private)
        write_public(node.public, public + f" fedkron-{node.name}\n".encode())
    return nodes


def register_command(public_key: str | Path, connection: str) -> list[str]:
    """``flwr supernode register`` for one public key on a SuperLink connection of ``$FLWR_HOME``."""
    path = Path(public_key)
    if not path.is_file():
        raise FileNotFoundError(f"fedkron.deploy.auth: public key {path} not found")
    if path.suffix != ".pub":
        raise ValueError(f"fedkron.deploy.auth: register the public key (*.pub), not {path.name}")
    return ["flwr", "supernode", "register", str(path.resolve()), connection, "--format", "json"]
