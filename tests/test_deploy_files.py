"""Key and certificate files: owner-only private keys whatever was there, no writing through symlinks,
no silent replacement of a CA or a node key (``--force`` to replace)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedkron.deploy import deploy_main, make_certificates, make_node_keys
from fedkron.deploy.keyfiles import KeyFileError, atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask():
    """umask 0: a mode that came from the umask, or from an old file, would show."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_force_replaces_a_0644_private_key_with_a_0600_one(tmp_path, permissive_umask):
    tls = make_certificates(tmp_path)
    (key,) = make_node_keys(tmp_path, ["edge-0"])
    private = [tls.ca_key, tls.server_key, key.private]
    for path in private:
        path.chmod(0o644)  # what an old tool, a copy or an operator left behind
    old = {p: p.read_bytes() for p in private}

    make_certificates(tmp_path, force=True)
    make_node_keys(tmp_path, ["edge-0"], force=True)
    for path in private:
        assert _mode(path) == 0o600, path
        assert path.read_bytes() != old[path], path  # really a new key
    assert _mode(tls.ca_cert) == _mode(tls.server_cert) == _mode(key.public) == 0o644
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ca.crt", "ca.key", "edge-0", "edge-0.pub", "server.key", "server.pem"]  # no temp files


def test_private_key_mode_does_not_come_from_the_umask(tmp_path):
    old = os.umask(0o277)  # would give 0400 to an os.open(..., 0o600) without fchmod
    try:
        (key,) = make_node_keys(tmp_path, ["edge-0"])
        tls = make_certificates(tmp_path / "c")
    finally:
        os.umask(old)
    assert _mode(key.private) == _mode(tls.ca_key) == _mode(tls.server_key) == 0o600
    assert _mode(tls.ca_cert) == 0o644


def test_an_existing_ca_is_kept_without_force(tmp_path, capsys):
    tls = make_certificates(tmp_path)
    before = {p: p.read_bytes() for p in (tls.ca_cert, tls.ca_key, tls.server_cert, tls.server_key)}
    with pytest.raises(KeyFileError, match=r"ca\.crt.*already exist.*--force"):
        make_certificates(tmp_path, ["10.0.0.1"])
    assert {p: p.read_bytes() for p in before} == before

    assert deploy_main(["certs", str(tmp_path), "--host", "10.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert str(tls.ca_cert) in err and "--force" in err
    assert {p: p.read_bytes() for p in before} == before

    assert deploy_main(["certs", str(tmp_path), "--host", "10.0.0.1", "--force"]) == 0
    assert all(p.read_bytes() != old for p, old in before.items())
    from fedkron.deploy import subject_names

    assert subject_names(tls.server_cert) == ["10.0.0.1"]


def test_an_existing_node_key_is_kept_without_force(tmp_path, capsys):
    (key,) = make_node_keys(tmp_path, ["edge-0"])
    before = key.private.read_bytes(), key.public.read_bytes()
    # a new name beside an existing one: refused as a whole, nothing half-written
    assert deploy_main(["keys", str(tmp_path), "edge-1", "edge-0"]) == 2
    err = capsys.readouterr().err
    assert str(key.private) in err and "--force" in err
    assert not (tmp_path / "edge-1").exists()
    assert (key.private.read_bytes(), key.public.read_bytes()) == before
    assert deploy_main(["keys", str(tmp_path), "edge-0", "--force"]) == 0
    assert key.private.read_bytes() != before[0] and _mode(key.private) == 0o600


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlink_at_a_key_path_is_refused_and_its_target_untouched(tmp_path, target_exists):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "precious"
    if target_exists:
        target.write_bytes(b"not a key\n")
        target.chmod(0o644)
    keys, certs = tmp_path / "keys", tmp_path / "certs"
    keys.mkdir()
    certs.mkdir()
    (keys / "edge-0").symlink_to(target)
    (certs / "server.key").symlink_to(target)

    for make in (lambda: make_node_keys(keys, ["edge-0"], force=True), lambda: make_certificates(certs, force=True)):
        with pytest.raises(KeyFileError, match="symlink"):
            make()
    assert (keys / "edge-0").is_symlink() and (certs / "server.key").is_symlink()
    if target_exists:
        assert target.read_bytes() == b"not a key\n" and _mode(target) == 0o644
    else:
        assert not target.exists()
    assert sorted(p.name for p in keys.iterdir()) == ["edge-0"]  # refused before writing anything
    assert sorted(p.name for p in certs.iterdir()) == ["server.key"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "server.key"
    path.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new", 0o600)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["server.key"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["certs", "{out}", "--days", "4000000"], "days must be in 1..36500 (got 4000000)"),
        (["certs", "{file}"], "exists and is not a folder"),
        (["certs", "{file}/sub"], "cannot create the folder"),
        (["keys", "{out}", "a" * 300], "at most 64 characters"),
        (["keys", "{out}", "a", "a.pub"], "may not end in .pub (got ['a.pub'])"),
        (["keys", "{out}", "edge.PUB"], "may not end in .pub"),
        (["keys", "{file}", "edge-0"], "exists and is not a folder"),
        (["connection", "x", "--address", "127.0.0.1:9093", "--insecure", "--flwr-home", "{file}"], "{file}"),
        (["superlink", "--insecure", "--no-node-auth", "--grace", "nan", "--dry-run"], "--grace must be a finite"),
    ],
    ids=[
        "days",
        "certs-on-a-file",
        "certs-under-a-file",
        "long-name",
        "pub-name",
        "PUB-name",
        "keys-on-a-file",
        "flwr-home-a-file",
        "grace-nan",
    ],
)
def test_every_deploy_error_is_one_line_and_writes_nothing(tmp_path, capsys, argv, fragment):
    """These were tracebacks (OverflowError, FileExistsError, OSError: File name too long), a silent
    private key in OUT/a.pub (the file `register` uploads as a's public key), or a NaN grace."""
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    out = tmp_path / "out"
    argv = [a.format(out=out, file=blocker) for a in argv]
    assert deploy_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"fedkron deploy {argv[0]}: ") and fragment.format(file=blocker) in err, err
    assert not out.exists() and blocker.read_text() == "mine"
