"""TLS for the SuperLink: a private CA and a server certificate whose subject names match the
addresses SuperNodes and ``flwr`` dial.

Written with the ``cryptography`` package (already a Flower dependency) so the same files come out
on any OS without an ``openssl`` binary. The CA key never leaves the machine that made it; only
``ca.crt`` goes to the SuperNodes (``--root-certificates``) and to ``flwr``'s connection.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedkron.deploy.keyfiles import check_targets, make_folder, target_folder, write_private, write_public

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
MAX_DAYS = 36_500  # 100 years; 4,000,000 days is past year 9999, the last date X.509 can hold


@dataclass(frozen=True)
class TlsFiles:
    """The three files the SuperLink needs (``--ssl-*``) and the one the SuperNodes need."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @property
    def ca_key(self) -> Path:
        """The CA's private key: stays on the machine that made the certificates."""
        return self.ca_cert.with_name("ca.key")

    @classmethod
    def in_folder(cls, folder: str | Path) -> TlsFiles:
        folder = Path(folder).resolve()
        return cls(folder / "ca.crt", folder / "server.pem", folder / "server.key")

    def check(self) -> TlsFiles:
        missing = [str(p) for p in (self.ca_cert, self.server_cert, self.server_key) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                "fedkron.deploy.certs: missing TLS files "
                + ", ".join(missing)
                + " (create them with `fedkron deploy certs DIR --host <address>`)"
            )
        return self


def make_certificates(
    folder: str | Path, hosts: tuple[str, ...] | list[str] = DEFAULT_HOSTS, days: int = 365, force: bool = False
) -> TlsFiles:
    """Create ``ca.crt``/``ca.key`` and ``server.pem``/``server.key`` in ``folder``.

    ``hosts`` are every name or IP the SuperLink is reached by; each becomes a subject alternative
    name (IP or DNS entry), which is what TLS clients check, not the common name. Existing files are
    replaced only with ``force`` (a new CA locks out every SuperNode holding the old ``ca.crt``);
    a symlink at any of the four paths is always refused.
    """
    if not hosts:
        raise ValueError(
            "fedkron.deploy.certs: at least one host (IP or DNS name) is needed for the server certificate"
        )
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"fedkron.deploy.certs: days must be in 1..{MAX_DAYS} (got {days})")
    files = TlsFiles.in_folder(target_folder(folder, "fedkron.deploy.certs"))
    check_targets(
        [files.ca_cert, files.ca_key, files.server_cert, files.server_key],
        force=force,
        what="fedkron.deploy.certs",
        hint="every SuperNode and `flwr` connection then needs the new ca.crt",
    )
    make_folder(files.ca_cert.parent, "fedkron.deploy.certs")
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key, ca_cert = _ca(now, until)
    server_key, server_cert = _server(hosts, ca_key, ca_cert.subject, now, until)
    _write_key(files.ca_key, ca_key)
    _write_key(files.server_key, server_key)
    write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    write_public(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def _ca(now: dt.datetime, until: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The private CA: signs the server certificate, nothing else (path length 0)."""
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedkron SuperLink CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return ca_key, ca_cert


def _server(
    hosts: tuple[str, ...] | list[str],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    now: dt.datetime,
    until: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's certificate: every host a subject alternative name, signed by the CA."""
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return server_key, server_cert


def subject_names(cert_path: str | Path) -> list[str]:
    """The DNS names and IPs a certificate is valid for (to check a cert before deploying it)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c in host for c in " /:@"):
            raise ValueError(f"fedkron.deploy.certs: {host!r} is neither an IP address nor a DNS name") from None
        return x509.DNSName(host)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Private keys: PEM, unencrypted (Flower reads them without a passphrase), owner-only."""
    write_private(
        path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
