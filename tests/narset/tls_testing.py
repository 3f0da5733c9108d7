"""A throwaway public-key infrastructure for TLS tests: a CA, a server and two client certificates it
signed ("client", and "dashboard" with a DNS SAN), and a stranger's client certificate signed by
another CA. EC keys, so it takes milliseconds."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "throwaway_pki"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate of another CA
    stranger_key: Path
    dashboard_cert: Path  # CN "dashboard", SAN dashboard.example
    dashboard_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer: str, issuer_key, ca: bool, usage=None, sans=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, certificate: x509.Certificate, key) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _issue(directory: Path, name: str, ca: tuple[str, object], usage, sans=()) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    return _write(directory, name, _certificate(name, key, ca[0], ca[1], False, usage, sans), key)


def throwaway_pki(directory: Path) -> Pki:
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_path, _ = _write(directory, "ca", _certificate("narset test CA", ca_key, "narset test CA", ca_key, True), ca_key)
    ca, other = ("narset test CA", ca_key), ("another CA", other_key)
    loopback = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    server = _issue(directory, "server", ca, ExtendedKeyUsageOID.SERVER_AUTH, loopback)
    client = _issue(directory, "client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _issue(directory, "stranger", other, ExtendedKeyUsageOID.CLIENT_AUTH)
    dashboard_san = (x509.DNSName("dashboard.example"),)
    dashboard = _issue(directory, "dashboard", ca, ExtendedKeyUsageOID.CLIENT_AUTH, dashboard_san)
    return Pki(ca_path, *server, *client, *stranger, *dashboard)
