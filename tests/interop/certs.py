"""Certificates made for a test, never checked in: a CA, a server certificate for 127.0.0.1 and
localhost, and client certificates (valid, expired, or from another CA).

    pki = Pki(tmp_path)                      # CA + server cert in tmp_path
    pki.client("sensor-1")                   # -> (cert_path, key_path) signed by the CA
    pki.client("old", expired=True)
    Pki(tmp_path / "other").client("rogue")  # a client of a CA the broker does not trust
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key, path: Path) -> Path:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    path.chmod(0o600)
    return path


def _write_cert(cert, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


class Pki:
    def __init__(self, directory: Path, name: str = "Roost Test CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = _key()
        now = dt.datetime.now(dt.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca = _write_cert(self.ca_cert, self.dir / "ca.pem")
        self.server_cert, self.server_key = self._issue(
            "roost-test-server", server=True, stem="server")

    def _issue(self, cn: str, *, server: bool = False, expired: bool = False,
               stem: str | None = None, sans: list[str] | None = None):
        key = _key()
        now = dt.datetime.now(dt.timezone.utc)
        if expired:
            before, after = now - dt.timedelta(days=10), now - dt.timedelta(days=1)
        else:
            before, after = now - dt.timedelta(days=1), now + dt.timedelta(days=30)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(before)
            .not_valid_after(after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            if sans:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        stem = stem or f"client-{cn}{'-expired' if expired else ''}"
        return (_write_cert(cert, self.dir / f"{stem}.pem"),
                _write_key(key, self.dir / f"{stem}.key"))

    def node(self, node_id: int):
        """A cluster node's certificate: DNS name roost-node-<id>, server and client use."""
        key = _key()
        now = dt.datetime.now(dt.timezone.utc)
        name = f"roost-node-{node_id}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return (_write_cert(cert, self.dir / f"{name}.pem"),
                _write_key(key, self.dir / f"{name}.key"))

    def client(self, cn: str, *, expired: bool = False, sans: list[str] | None = None):
        """A client certificate and key for `cn`, signed by this CA."""
        return self._issue(cn, expired=expired, sans=sans)

    def reissue_server(self, cn: str = "roost-test-server-2"):
        """A new server certificate over the same files (for reload tests)."""
        return self._issue(cn, server=True, stem="server")
