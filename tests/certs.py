"""Throw-away TLS certificates for tests: a CA and the server and client certificates it
signs, for servers on 127.0.0.1 / localhost. Never use them anywhere else.

    ca = CertificateAuthority(tmp_path)
    server = LocalRedis(tmp_path / "redis", tls=ca.server()).start()
    cert, key = ca.client()                      # for mutual TLS
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from launch import TlsFiles

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


class CertificateAuthority:
    """A fresh CA whose certificate (``ca.pem``) and key live in ``directory``."""

    def __init__(self, directory: Path, name: str = "distq test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self._key.public_key()
        self._cert = (
            _builder(subject, subject, public)
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca = self.directory / "ca.pem"
        self.ca.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def server(self, hosts: tuple[str, ...] = LOOPBACK_NAMES, name: str = "server") -> TlsFiles:
        """A server certificate for ``hosts`` (IP addresses or DNS names), with this CA."""
        cert, key = self._issue(name, hosts, ExtendedKeyUsageOID.SERVER_AUTH)
        return TlsFiles(ca=self.ca, cert=cert, key=key)

    def client(self, name: str = "distq-client") -> tuple[Path, Path]:
        """A client certificate and its key (``NAME.pem``, ``NAME-key.pem``) for mutual TLS."""
        return self._issue(name, (), ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(
        self, name: str, hosts: tuple[str, ...], usage: x509.ObjectIdentifier
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            _builder(subject, self._cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False
            )
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}-key.pem"
        cert_path.write_bytes(
            builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # a little clock skew is fine
        .not_valid_after(now + dt.timedelta(days=2))
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
