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

from fedkron.deploy.keyfiles import check_targets, make_folder, target_folder, write_private, write_public

MAX_NAME = 64  # a SuperNode name is a file name (and the comment of its public key): short and portable
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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
    check_node_names(names)
    folder = target_folder(folder, "fedkron.deploy.auth")
    nodes = [NodeKey(n, folder / n, folder / f"{n}.pub") for n in names]
    check_targets(
        [p for node in nodes for p in (node.private, node.public)],
        force=force,
        what="fedkron.deploy.auth",
        hint="register the new public key; the old one stays registered until removed",
    )
    make_folder(folder, "fedkron.deploy.auth")
    for node in nodes:
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        write_private(node.private, private)
        write_public(node.public, public + f" fedkron-{node.name}\n".encode())
    return nodes


def check_node_names(names: list[str] | tuple[str, ...]) -> None:
    """Names that are safe file names and can never collide: ``a.pub`` would write its private key
    to ``a``'s public key file, the one ``register`` uploads; a 300-character name is longer than a
    file name may be."""
    if not names:
        raise ValueError("fedkron.deploy.auth: give at least one SuperNode name")
    too_long = [f"{n[:20]}... ({len(n)} characters)" for n in names if len(n) > MAX_NAME]
    if too_long:
        raise ValueError(f"fedkron.deploy.auth: SuperNode names may have at most {MAX_NAME} characters: {too_long}")
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if bad:
        raise ValueError(
            "fedkron.deploy.auth: SuperNode names must start with a letter or digit, then letters, digits, "
            f"'_', '.', '-' (got {bad})"
        )
    public = [n for n in names if n.lower().endswith(".pub")]
    if public:
        raise ValueError(
            f"fedkron.deploy.auth: SuperNode names may not end in .pub (got {public}): the node's private key "
            "would be written where another node's public key is"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"fedkron.deploy.auth: SuperNode names repeat: {list(names)}")


def register_command(public_key: str | Path, connection: str) -> list[str]:
    """``flwr supernode register`` for one public key on a SuperLink connection of ``$FLWR_HOME``."""
    path = Path(public_key)
    if not path.is_file():
        raise FileNotFoundError(f"fedkron.deploy.auth: public key {path} not found")
    if path.suffix != ".pub":
        raise ValueError(f"fedkron.deploy.auth: register the public key (*.pub), not {path.name}")
    return ["flwr", "supernode", "register", str(path.resolve()), connection, "--format", "json"]
