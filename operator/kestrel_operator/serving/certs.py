"""A CA and a serving certificate for the admission webhook, generated with `cryptography`. Pure: PEM in, PEM out.

The API server verifies the webhook against the CA in the ValidatingWebhookConfiguration's caBundle, and the
serving certificate must name the host it is reached by (the Service's DNS names in a cluster, 127.0.0.1 when
the webhook is reached by URL on loopback).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)
# A certificate with less than this left is replaced at the next operator start.
RENEW_BEFORE = dt.timedelta(days=90)


@dataclass(frozen=True)
class WebhookCerts:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def generate(hosts: Sequence[str], now: dt.datetime | None = None) -> WebhookCerts:
    """A fresh CA (its key is dropped: nothing else is ever signed) and a serving certificate for `hosts`."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name")
    now = now or dt.datetime.now(dt.timezone.utc)
    ca_key, key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kestrel-webhook-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return WebhookCerts(
        ca_pem=ca.public_bytes(pem),
        cert_pem=cert.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def still_good(certs: WebhookCerts, hosts: Sequence[str], now: dt.datetime | None = None) -> bool:
    """True when `certs` name exactly `hosts`, chain to their CA, and have more than RENEW_BEFORE left."""
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        cert = x509.load_pem_x509_certificate(certs.cert_pem)
        ca = x509.load_pem_x509_certificate(certs.ca_pem)
        serialization.load_pem_private_key(certs.key_pem, password=None)
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    wanted = {str(_san(h).value) for h in hosts}
    have = {str(n.value) for n in names}
    return have == wanted and cert.not_valid_after_utc - now > RENEW_BEFORE
