"""TLS material made in memory with `cryptography`: a certificate authority and the
certificates it issues (ECDSA P-256, PEM bytes).

`serve` makes one CA per cluster at start and issues the scheduler's and the
workers' certificates from it; the CA's key never leaves that process. Peers
verify each other against the cluster CA under one fixed name
(`CLUSTER_TLS_NAME`, through gRPC's target-name override), so a worker's
certificate does not depend on the address Ray gives it. The same functions
make the test certificates for the client-facing TLS options.
"""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field

# The name every cluster member's certificate carries and every member checks.
CLUSTER_TLS_NAME = "cluster.infersched.internal"
# A cluster's CA lives as long as `serve`; a year bounds a certificate that leaks with a log.
VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    """A certificate, its key and the CA certificate(s) its peers are checked against (PEM)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @classmethod
    def generate(cls, name: str = "infersched cluster CA") -> "CertificateAuthority":
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(_cert_pem(cert), _key_pem(key))

    def issue(self, common_name: str, hosts: tuple[str, ...] = (CLUSTER_TLS_NAME,)) -> TlsIdentity:
        """A certificate for `common_name`, valid for `hosts` (DNS names or IP addresses),
        usable by servers and clients (mutual TLS)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        ca_cert = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = serialization.load_pem_private_key(self.key_pem, password=None)
        key = _new_key()
        now = _now()
        names = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return TlsIdentity(_cert_pem(cert), _key_pem(key), self.cert_pem)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _cert_pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
