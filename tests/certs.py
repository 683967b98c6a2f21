"""Throw-away TLS certificates for tests: a CA and the server and client certificates it
signs (expired ones too), for servers on 127.0.0.1 / localhost. Never use them anywhere else.

    ca = CertificateAuthority(tmp_path)
    server = LocalRedis(tmp_path / "redis", tls=ca.server()).start()
    cert, key = ca.client()                      # for mutual TLS
    old = ca.issue("old", hosts=("127.0.0.1",), expired=True)
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

from launch import TlsFiles

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


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
        self.cert = self.directory / "ca.pem"  # the CA's own certificate, for clients to trust
        self.cert.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def server(self, hosts: tuple[str, ...] = LOOPBACK_NAMES, name: str = "server") -> TlsFiles:
        """A server certificate for ``hosts`` (IP addresses or DNS names), with this CA."""
        pair = self.issue(name, hosts=hosts)
        return TlsFiles(ca=self.cert, cert=pair.cert, key=pair.key)

    def client(self, name: str = "distq-client") -> tuple[Path, Path]:
        """A client certificate and its key (``NAME.pem``, ``NAME-key.pem``) for mutual TLS."""
        pair = self.issue(name, hosts=(), client=True)
        return pair.cert, pair.key

    def encrypted_client(self, directory: Path) -> tuple[Path, Path]:
        """A client certificate and its key, encrypted with a pass phrase
        (``DIRECTORY/encrypted-key.pem``): a key no one should be asked to unlock."""
        client = self.issue("client", client=True)
        key = serialization.load_pem_private_key(client.key.read_bytes(), password=None)
        encrypted = directory / "encrypted-key.pem"
        encrypted.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"a pass phrase"),
            )
        )
        return client.cert, encrypted

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = LOOPBACK_NAMES,
        client: bool = False,
        expired: bool = False,
    ) -> Pair:
        """A leaf certificate for ``hosts`` (IPs or DNS names); ``expired`` ended days ago."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            _builder(subject, self._cert.subject, key.public_key(), expired=expired)
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
        pair = Pair(self.directory / f"{name}.pem", self.directory / f"{name}-key.pem")
        pair.cert.write_bytes(
            builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pair.key.chmod(0o644)  # a broker may run as another user and must read it
        return pair


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    expired: bool = False,
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    if expired:  # valid from ten days ago until nine days ago
        now -= dt.timedelta(days=5)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=5 if expired else 0, minutes=5))
        .not_valid_after(now + dt.timedelta(days=-4 if expired else 2))
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
