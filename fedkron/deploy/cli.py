"""``fedkron deploy``: certificates, node keys, connections and the SuperLink/SuperNode commands.

Secure by default: TLS and SuperNode authentication unless ``--insecure`` is given. Every command
that starts Flower prints the exact command line first; ``--dry-run`` only prints it (to paste on
an edge machine that has no fedkron CLI). Existing keys and certificates are kept unless
``--force``. ``superlink`` and ``supernode`` stay in front of the Flower processes they start and
take them down with them (SIGTERM/SIGINT/SIGHUP forwarded, or the kernel's parent-death signal).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

from fedkron.deploy.auth import make_node_keys, register_command
from fedkron.deploy.certs import DEFAULT_HOSTS, TlsFiles, make_certificates, subject_names
from fedkron.deploy.commands import (
    DeployConfigError,
    shell_line,
    superlink_command,
    supernode_command,
    warm_worker_command,
    write_connection,
)
from fedkron.deploy.processes import FLOWER_ENV, flower_env
from fedkron.deploy.supervise import DEFAULT_GRACE, Supervisor


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedkron deploy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    _add_file_commands(sub)
    _add_process_commands(sub)
    return p


def _add_file_commands(sub) -> None:
    """certs, keys, connection, register: the files and registrations a deployment needs."""
    c = sub.add_parser("certs", help="create a CA and a SuperLink server certificate")
    c.add_argument("outdir")
    c.add_argument(
        "--host",
        action="append",
        help=f"address the SuperLink is reached by (IP or DNS; repeat). Default: {', '.join(DEFAULT_HOSTS)}",
    )
    c.add_argument("--days", type=int, default=365)
    c.add_argument(
        "--force",
        action="store_true",
        help="replace existing CA and server files (every SuperNode then needs the new ca.crt)",
    )

    k = sub.add_parser("keys", help="create SuperNode key pairs (OpenSSH, NIST P-384)")
    k.add_argument("outdir")
    k.add_argument("names", nargs="+", help="one name per SuperNode")
    k.add_argument("--connection", default="edge", help="connection name used in the printed register commands")
    k.add_argument("--force", action="store_true", help="replace existing key pairs of these names")

    n = sub.add_parser("connection", help="write a SuperLink connection into $FLWR_HOME/config.toml")
    n.add_argument("name")
    n.add_argument("--address", required=True, help="SuperLink host:port")
    n.add_argument("--root-certificates", help="the CA file (ca.crt) the SuperLink's certificate was signed with")
    n.add_argument("--insecure", action="store_true", help="no TLS (tests on one machine only)")
    n.add_argument("--flwr-home", default=os.environ.get("FLWR_HOME", str(Path.home() / ".flwr")))
    n.add_argument("--default", action="store_true", help="make it the default connection")

    r = sub.add_parser("register", help="register SuperNode public keys with the SuperLink")
    r.add_argument("public_keys", nargs="+")
    r.add_argument("--connection", default="edge")
    r.add_argument("--dry-run", action="store_true")


def _add_process_commands(sub) -> None:
    """superlink, supernode: the long-running Flower processes, supervised."""
    s = sub.add_parser("superlink", help="start a SuperLink (TLS + SuperNode authentication)")
    s.add_argument("--certs", help="folder from `fedkron deploy certs`")
    s.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    s.add_argument("--port", type=int, default=9091, help="one port for Fleet, Control and Runtime APIs")
    s.add_argument("--database", help="SQLite file so registrations and runs survive a restart")
    s.add_argument("--no-node-auth", action="store_true", help="accept any SuperNode that trusts the CA")
    s.add_argument("--insecure", action="store_true", help="no TLS, no node authentication")
    _add_grace(s)
    s.add_argument("--dry-run", action="store_true")

    e = sub.add_parser("supernode", help="start a SuperNode (+ a warm ClientApp worker)")
    e.add_argument("--superlink", required=True, help="SuperLink host:port")
    where = e.add_mutually_exclusive_group(required=True)
    where.add_argument("--partition", nargs=2, type=int, metavar=("ID", "NUM"), help="partition ID of NUM")
    where.add_argument("--data-dir", help="this node's own data folder (layout of shared/data)")
    e.add_argument("--root-certificates", help="the SuperLink's CA file (ca.crt)")
    e.add_argument("--key", help="this node's private key (from `fedkron deploy keys`)")
    e.add_argument("--port", type=int, default=9094, help="the SuperNode's local Runtime API port")
    e.add_argument(
        "--cold",
        action="store_true",
        help="Flower's default: a fresh ClientApp process per message (seconds of start-up each)",
    )
    e.add_argument("--insecure", action="store_true", help="no TLS")
    _add_grace(e)
    e.add_argument("--dry-run", action="store_true")


def _add_grace(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT/SIGHUP, how long the Flower processes may take to exit "
        f"before SIGKILL (default {DEFAULT_GRACE:g})",
    )


def deploy_main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedkron deploy``; returns the exit status. Every error a user can cause (a
    bad value, a file in the way, a folder that cannot be written) is one line on stderr, status 2."""
    args = _parser().parse_args(argv)
    try:
        _check_grace(args)
        return _COMMANDS[args.command](args)
    except (DeployConfigError, OSError, ValueError) as err:
        print(f"fedkron deploy {args.command}: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """An OSError as "what: path" (its str() is "[Errno 36] File name too long: '...'"), others as they read."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _check_grace(args) -> None:
    grace = getattr(args, "grace", None)
    if grace is not None and not (math.isfinite(grace) and grace >= 0):
        raise DeployConfigError(f"--grace must be a finite number of seconds ≥ 0 (got {grace})")


def _certs(args) -> int:
    files = make_certificates(args.outdir, args.host or DEFAULT_HOSTS, args.days, force=args.force)
    print(f"CA certificate   {files.ca_cert}   (copy to every SuperNode and to the `flwr` machine)")
    print(f"server cert/key  {files.server_cert}, {files.server_key}   (SuperLink only)")
    print(f"valid for        {', '.join(subject_names(files.server_cert))}")
    print(
        "\nSuperLink flags:  "
        + shell_line(
            [
                "--ssl-ca-certfile",
                str(files.ca_cert),
                "--ssl-certfile",
                str(files.server_cert),
                "--ssl-keyfile",
                str(files.server_key),
            ]
        )
    )
    print("SuperNode flags:  " + shell_line(["--root-certificates", str(files.ca_cert)]))
    return 0


def _keys(args) -> int:
    for key in make_node_keys(args.outdir, args.names, force=args.force):
        print(f"{key.name}: private {key.private} (stays on the node), public {key.public}")
        print("   register: " + shell_line(register_command(key.public, args.connection)))
    return 0


def _connection(args) -> int:
    path = write_connection(
        args.flwr_home,
        args.name,
        args.address,
        root_certificates=args.root_certificates,
        insecure=args.insecure,
        make_default=args.default,
    )
    print(f"connection {args.name!r} → {args.address} written to {path}; run with: flwr run . {args.name}")
    return 0


def _register(args) -> int:
    status = 0
    for key in args.public_keys:
        cmd = register_command(key, args.connection)
        print(shell_line(cmd, FLOWER_ENV))
        if not args.dry_run:
            status = status or subprocess.run(cmd, env=flower_env()).returncode
    return status


def _superlink(args) -> int:
    tls = TlsFiles.in_folder(args.certs) if args.certs else None
    cmd = superlink_command(
        host=args.host,
        port=args.port,
        tls=tls,
        insecure=args.insecure,
        node_auth=not (args.no_node_auth or args.insecure),
        database=args.database,
    )
    print(shell_line(cmd, FLOWER_ENV), flush=True)
    if args.dry_run:
        return 0
    with Supervisor(args.grace) as sup:  # its log goes to this process's stdout/stderr (journal)
        link = sup.start("SuperLink", cmd, None, flower_env())
        print(f"SuperLink PID {link.pid}; Ctrl-C or SIGTERM stops it", flush=True)
        return sup.wait()


def _supernode(args) -> int:
    cmd = supernode_command(
        superlink=args.superlink,
        port=args.port,
        partition=tuple(args.partition) if args.partition else None,
        data_dir=args.data_dir,
        root_certificates=args.root_certificates,
        private_key=args.key,
        insecure=args.insecure,
        isolation="subprocess" if args.cold else "process",
    )
    print(shell_line(cmd, FLOWER_ENV))
    worker = None if args.cold else warm_worker_command(runtime_api=f"127.0.0.1:{args.port}", parent_pid=None)
    if worker:
        print(shell_line(worker, FLOWER_ENV) + "   # with --parent-pid <SuperNode PID>")
    sys.stdout.flush()
    if args.dry_run:
        return 0
    if worker:
        _check_flower_for_worker()
    env = flower_env()
    with Supervisor(args.grace) as sup:
        node = sup.start("SuperNode", cmd, Path(f"supernode-{args.port}.log").resolve(), env)
        if worker:
            sup.start(
                "warm ClientApp worker",
                warm_worker_command(runtime_api=f"127.0.0.1:{args.port}", parent_pid=node.pid),
                Path(f"worker-{args.port}.log").resolve(),
                env,
            )
        logs = f"./supernode-{args.port}.log" + (f" and ./worker-{args.port}.log" if worker else "")
        print(
            f"SuperNode PID {node.pid}, logs in {logs}; Ctrl-C or SIGTERM stops " + ("both" if worker else "it"),
            flush=True,
        )
        return sup.wait()


def _check_flower_for_worker() -> None:
    """The warm worker uses private Flower modules: refuse an untested Flower here, not in its log."""
    try:
        import fedkron.flwr_private  # noqa: F401 - the import is the check
    except ImportError as err:
        raise DeployConfigError(str(err)) from err


_COMMANDS = {
    "certs": _certs,
    "keys": _keys,
    "connection": _connection,
    "register": _register,
    "superlink": _superlink,
    "supernode": _supernode,
}
