"""Deployment on real Flower processes over loopback: SuperLink + SuperNodes with TLS and SuperNode
authentication, running the real app (tiny model), plus refused nodes and a node that crashes.

One secure federation (module fixture) serves the whole file so the warm ClientApp workers import
torch and the app once; every process is stopped by PID in the finalizer, also on failure.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from fedkron.deploy import (
    DeployConfigError,
    format_config,
    make_certificates,
    make_node_keys,
    superlink_command,
    supernode_command,
    write_connection,
)

TINY = {
    "model": "tiny-bert",
    "task": "sst2",
    "max-length": 32,
    "local-steps": 2,
    "batch-size": 8,
    "eval-samples": 32,
    "rounds": 2,
    "clients": 2,
}
needs_flower = pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="Flower CLIs not on PATH")


# --- no processes: what the commands and files say ---------------------------------------------
def test_secure_by_default_and_insecure_only_when_asked(tmp_path):
    tls = make_certificates(tmp_path / "certs")
    link = superlink_command(port=9100, tls=tls)
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert link[link.index("--ssl-certfile") + 1] == str(tls.server_cert)
    with pytest.raises(DeployConfigError, match="needs TLS files"):
        superlink_command(port=9100)
    with pytest.raises(DeployConfigError, match="authentication needs TLS"):
        superlink_command(port=9100, insecure=True)
    assert "--insecure" in superlink_command(port=9100, insecure=True, node_auth=False)
    with pytest.raises(DeployConfigError, match="needs the SuperLink's CA"):
        supernode_command(superlink="h:1", port=2, partition=(0, 2))
    with pytest.raises(DeployConfigError, match="outside"):
        supernode_command(superlink="h:1", port=2, partition=(2, 2), insecure=True)
    node = supernode_command(superlink="h:1", port=2, partition=(1, 3), root_certificates=tls.ca_cert)
    assert node[node.index("--node-config") + 1] == "partition-id=1 num-partitions=3"
    assert node[node.index("--isolation") + 1] == "process"


def test_supernode_with_its_own_data_dir_needs_no_partition(tmp_path, capsys):
    """An edge machine with its own data: the node config is only ``data-dir`` (absolute path), as
    Flower's SuperNode parses it; no partition-id / num-partitions."""
    import shlex

    from flwr.common.config import parse_config_args  # what flower-supernode does with --node-config

    from fedkron.deploy import deploy_main

    data = tmp_path / "my data"
    data.mkdir()
    node = supernode_command(superlink="h:1", port=2, data_dir=str(data), insecure=True)
    assert parse_config_args([node[node.index("--node-config") + 1]]) == {"data-dir": str(data.resolve())}

    assert deploy_main(["supernode", "--superlink", "h:1", "--data-dir", str(data), "--insecure", "--dry-run"]) == 0
    printed = shlex.split(capsys.readouterr().out.splitlines()[0])
    assert printed[printed.index("--node-config") + 1] == f'data-dir="{data.resolve()}"'
    with pytest.raises(DeployConfigError, match="not a folder"):
        supernode_command(superlink="h:1", port=2, data_dir=str(tmp_path / "missing"), insecure=True)


def test_server_certificate_verifies_for_its_names_only(tmp_path):
    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

    tls = make_certificates(tmp_path / "a", ["127.0.0.1", "edge.example.org"])
    other = make_certificates(tmp_path / "b", ["127.0.0.1"])
    leaf = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())

    def verify(ca_path, name):
        store = Store([x509.load_pem_x509_certificate(Path(ca_path).read_bytes())])
        PolicyBuilder().store(store).build_server_verifier(name).verify(leaf, [])

    import ipaddress

    verify(tls.ca_cert, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    verify(tls.ca_cert, x509.DNSName("edge.example.org"))
    with pytest.raises(VerificationError):
        verify(tls.ca_cert, x509.DNSName("other.example.org"))
    with pytest.raises(VerificationError):
        verify(other.ca_cert, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    assert oct(tls.server_key.stat().st_mode & 0o777) == "0o600"


def test_node_keys_are_openssh_p384_that_flower_loads(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    (key,) = make_node_keys(tmp_path, ["edge-0"])
    assert try_load_public_key(key.public)  # Flower's own reader for `flwr supernode register`
    private = load_ssh_private_key(key.private.read_bytes(), None)  # what flower-supernode does
    assert isinstance(private.curve, ec.SECP384R1)
    with pytest.raises(ValueError, match="names"):
        make_node_keys(tmp_path, ["../evil"])


def test_run_config_and_connection_files(tmp_path):
    import tomllib

    assert (
        format_config({"model": "tiny-bert", "rounds": 2, "lr": 0.5, "error-feedback": False}, "'")
        == "model='tiny-bert' rounds=2 lr=0.5 error-feedback=false"
    )
    with pytest.raises(DeployConfigError, match="quotes"):
        format_config({"out": "it's"}, "'")
    ca = make_certificates(tmp_path / "c").ca_cert
    write_connection(tmp_path, "edge", "10.0.0.1:9091", root_certificates=ca)
    write_connection(tmp_path, "lab", "127.0.0.1:9092", insecure=True)
    doc = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert doc["default"] == "edge" and doc["edge"] == {"address": "10.0.0.1:9091", "root-certificates": str(ca)}
    assert doc["lab"] == {"address": "127.0.0.1:9092", "insecure": True}
    with pytest.raises(DeployConfigError):
        write_connection(tmp_path, "x", "h:1")


# --- real processes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """SuperLink (TLS + node auth), registered nodes n0/n1 with warm workers, and two refused nodes
    started before any run: one with an unregistered key, one trusting another CA."""
    from fedkron.deploy.local import LocalFederation

    root = tmp_path_factory.mktemp("deploy")
    fed = LocalFederation(root)
    try:
        fed.start_superlink()
        fed.keys = {k.name: k for k in fed.make_keys(["n0", "n1"])}
        (rogue_key,) = fed.make_keys(["rogue"], register=False)
        other_ca = make_certificates(root / "other-ca").ca_cert
        for i in range(2):
            fed.start_supernode(f"n{i}", (i, 2), key=fed.keys[f"n{i}"])
        refused = {"max_retries": 1, "max_wait_time": 20}
        fed.start_supernode("unregistered", (2, 3), key=rogue_key, warm=False, **refused)
        fed.start_supernode("wrong-ca", (2, 3), key=fed.keys["n0"], root_certificates=other_ca, warm=False, **refused)
        fed.wait_connected(["n0", "n1"])
        yield fed
    finally:
        fed.close()


def _ledger(out: Path) -> list[dict]:
    with open(out / "ledger.csv") as fh:
        return list(csv.DictReader(fh))


def _rows(out: Path) -> dict[int, dict]:
    return {r["round"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@needs_flower
@pytest.mark.deploy
def test_two_rounds_with_tls_and_node_auth(federation, tmp_path):
    for i in range(2):  # order-independence: a node crashed by another test is replaced
        if not federation.nodes[f"n{i}"].alive:
            federation.start_supernode(f"n{i}", (i, 2), key=federation.keys[f"n{i}"])
            federation.wait_connected([f"n{i}"])
    out = tmp_path / "results"
    summary = federation.run({**TINY, "out": str(out)}, timeout=240)

    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    rows = _rows(out)
    assert sorted(rows) == [0, 1, 2]
    assert all(rows[r]["accepted"] == 2 and rows[r]["failed"] == 0 for r in (1, 2))
    train = [r for r in _ledger(out) if r["kind"] == "train"]
    for rnd in ("1", "2"):
        for direction in ("up", "down"):
            got = sorted(r["partition_id"] for r in train if r["round"] == rnd and r["direction"] == direction)
            assert got == ["0", "1"], (rnd, direction, got)
    assert all(r["status"] == "ok" and int(r["serialized"]) > 0 for r in train)
    assert summary["bytes_up"] == sum(int(r["serialized"]) for r in _ledger(out) if r["direction"] == "up")
    assert (out / "adapter").is_dir()
    # the refused nodes never joined: the SuperLink lists exactly the two registered nodes
    assert len(federation.node_ids()) == 2


@needs_flower
@pytest.mark.deploy
def test_unregistered_key_and_wrong_ca_are_refused(federation):
    bad = {name: federation.nodes[name].supernode for name in ("unregistered", "wrong-ca")}
    for name, proc in bad.items():
        try:
            proc.popen.wait(timeout=60)
        except Exception:  # noqa: BLE001
            pytest.fail(f"SuperNode {name} is still trying after 60 s; log:\n{proc.log()[-2000:]}")
        assert proc.popen.returncode != 0, name
    assert "Failed to activate SuperNode" in bad["unregistered"].log()
    assert "CERTIFICATE_VERIFY_FAILED" in bad["wrong-ca"].log()
    assert len(federation.node_ids()) == 2  # only n0 and n1 are known to the SuperLink


@needs_flower
@pytest.mark.deploy
def test_run_completes_when_a_supernode_dies_mid_run(federation, tmp_path):
    from fedkron.deploy.local import wait_for_round, wait_for_summary

    assert federation.nodes["n0"].alive and federation.nodes["n1"].alive
    out = tmp_path / "results"
    run = federation.start_run({**TINY, "out": str(out)}, log_name="run-kill.log")
    wait_for_round(out, 1, timeout=180)
    federation.nodes["n1"].kill()  # SIGKILL: no goodbye, the SuperLink notices by missed heartbeats
    wait_for_summary(out, run, timeout=180)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    rows = _rows(out)
    assert rows[1]["accepted"] == 2
    assert rows[2]["accepted"] == 1 and rows[2]["failed"] == 1  # Flower's "node unavailable" reply
    up2 = [(r["partition_id"], r["status"]) for r in _ledger(out) if r["round"] == "2" and r["direction"] == "up"]
    assert sorted(up2) == [("0", "ok"), ("1", "failed")]  # the error reply is counted too


@needs_flower
@pytest.mark.deploy
def test_a_supernode_that_joins_late_is_used_from_the_next_round(federation, tmp_path):
    from fedkron.deploy.local import wait_for_round, wait_for_summary

    if federation.nodes["n1"].alive:  # run alone: make n1 the late one
        federation.nodes["n1"].kill()
    if not federation.nodes["n0"].alive:
        federation.start_supernode("n0", (0, 2), key=federation.keys["n0"])
        federation.wait_connected(["n0"])
    out = tmp_path / "results"
    run = federation.start_run({**TINY, "rounds": 5, "clients": 1, "out": str(out)}, log_name="run-late.log")
    wait_for_round(out, 1, timeout=180)
    federation.start_supernode("n1", (1, 2), key=federation.keys["n1"])  # joins after round 1
    federation.wait_connected(["n1"])
    wait_for_summary(out, run, timeout=240)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 5
    ok_up = {
        (r["round"], r["partition_id"])
        for r in _ledger(out)
        if r["direction"] == "up" and r["kind"] == "train" and r["status"] == "ok"
    }
    assert ("1", "0") in ok_up and ("1", "1") not in ok_up  # round 1: only the early node
    # the late node trains in a later round (which one depends on how soon it connects: a loaded
    # machine can take a few rounds of this tiny model to start a SuperNode)
    assert any(p == "1" and r != "1" for r, p in ok_up), sorted(ok_up)


@needs_flower
@pytest.mark.deploy
def test_edge_nodes_with_their_own_data_train(tmp_path):
    """The documented own-data path: two SuperNodes started with only their own data folder (no
    partition), each a different slice of SST-2, two rounds: both are used, each in a slot of its own."""
    from fedkron.data import get_splits
    from fedkron.deploy.local import LocalFederation

    train = get_splits("sst2")["train"]
    sizes = (48, 80)
    for i, n in enumerate(sizes):
        folder = tmp_path / f"edge-{i}" / "sst2"
        folder.mkdir(parents=True)
        rows = train.select(range(1000 * i, 1000 * i + n))
        body = "".join(f"{t}\t{y}\n" for t, y in zip(rows["text"], rows["label"]))
        (folder / "train.tsv").write_text("sentence\tlabel\n" + body)
        (folder / "dev.tsv").write_text("sentence\tlabel\n" + body[: body.index("\n", 200) + 1])
    with LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        keys = fed.make_keys(["e0", "e1"])
        for i, key in enumerate(keys):
            fed.start_supernode(f"e{i}", None, key=key, data_dir=str(tmp_path / f"edge-{i}"))
        fed.wait_connected(["e0", "e1"])
        out = tmp_path / "results"
        summary = fed.run({**TINY, "task": "sst2", "out": str(out)}, timeout=300)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    rows = _rows(out)
    assert all(rows[r]["accepted"] == 2 and rows[r]["rejected"] == 0 for r in (1, 2))
    train_rows = [r for r in _ledger(out) if r["kind"] == "train"]
    assert sorted({r["partition_id"] for r in train_rows}) == ["0", "1"]  # a slot each
