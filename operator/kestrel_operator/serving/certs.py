"""The admission webhook's certificates, generated with `cryptography`, and their rotation schedule. Pure: PEM
and times in, PEM out (webhook.py does the reading and writing).

The API server verifies the webhook against the CA bundle in the ValidatingWebhookConfiguration's caBundle, and
the serving certificate must name the host it is reached by (the Service's DNS names in a cluster, 127.0.0.1
when the webhook is reached by URL on loopback).

Rotation (`plan`), one step per check; the state is what the Secret holds (`WebhookCerts`):
1. At 2/3 of the served certificate's lifetime a new CA and serving certificate are made. The new CA joins the
   bundle (old + new) and the new pair waits in `next_*`; every replica keeps serving the old pair.
2. Once the bundle with the new CA is in the webhook configuration (as read at the start of a check) and one
   check interval has passed since step 1, the new pair becomes the served one. Replicas load it within one
   check interval; the API server trusts it already, and still trusts the old one.
3. A CA leaves the bundle once it has expired, never while it issued the served or the waiting certificate.
   A CA and the certificate it issued expire together (same notAfter), so no replica can be serving a
   certificate of a dropped CA: an expired certificate is refused anyway. With the default one-year lifetime
   the bundle holds two CAs for the last third of the old certificate's life (about four months).
A served certificate that is unusable (missing, other host names, wrong key, not from a CA in the bundle) or
that expires within one check interval is replaced at once; old CAs still valid stay in the bundle (those of the
webhook configuration when the Secret is gone), so replicas not yet reloaded keep working.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Optional

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)  # the default lifetime (KESTREL_WEBHOOK_CERT_SECONDS)
MIN_VALIDITY = dt.timedelta(seconds=60)
RENEW_AT = 2 / 3  # of the lifetime
# Certificates are valid from a little before they are made (clock skew between the operator and the API server).
BACKDATE = dt.timedelta(minutes=5)
# How often a replica checks its Secret: 1/12 of the lifetime, between these bounds (60 s for the default).
MIN_CHECK = dt.timedelta(seconds=1)
MAX_CHECK = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class WebhookCerts:
    """What the webhook's Secret holds. `ca_pem`: the CA bundle the API server must trust (one PEM, two during a
    rotation); `cert_pem`/`key_pem`: the pair every replica serves; `next_*`: the pair waiting for its CA to be
    published (step 1 of a rotation) and when it was made."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    next_cert_pem: bytes = b""
    next_key_pem: bytes = b""
    next_since: Optional[dt.datetime] = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def check_interval(lifetime: dt.timedelta) -> dt.timedelta:
    """How often a replica looks at the Secret for a certificate of this lifetime."""
    return min(max(lifetime / 12, MIN_CHECK), MAX_CHECK)


def lifetime_of(cert_pem: bytes) -> dt.timedelta:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def renew_at(cert_pem: bytes) -> dt.datetime:
    """When a rotation starts: 2/3 of the way from notBefore to notAfter."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) * RENEW_AT


def generate(hosts: Sequence[str], now: Optional[dt.datetime] = None,
             lifetime: dt.timedelta = VALIDITY) -> WebhookCerts:
    """A fresh CA (its key is dropped: nothing else is ever signed) and a serving certificate for `hosts`, both
    valid until now + lifetime."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name")
    now = now or _now()
    start, end = now - min(BACKDATE, lifetime / 10), now + lifetime
    ca_key, key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kestrel-webhook-ca"),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{x509.random_serial_number():x}"[:32])])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return WebhookCerts(
        ca_pem=ca.public_bytes(pem),
        cert_pem=cert.public_bytes(pem),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def cas(bundle: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM bundle ([] when it has none or does not parse)."""
    try:
        return x509.load_pem_x509_certificates(bundle) if bundle.strip() else []
    except ValueError:
        return []


def join(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def issuer_in(cert_pem: bytes, bundle: Sequence[x509.Certificate]) -> Optional[x509.Certificate]:
    """The CA of `bundle` that signed `cert_pem`, if any."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return None
    for ca in bundle:
        try:
            cert.verify_directly_issued_by(ca)
            return ca
        except (ValueError, TypeError, InvalidSignature):
            continue
    return None


def servable(cert_pem: bytes, key_pem: bytes, now: dt.datetime, margin: dt.timedelta = dt.timedelta(0),
             hosts: Optional[Sequence[str]] = None, bundle: Optional[Sequence[x509.Certificate]] = None) -> bool:
    """True when the pair parses, the key is the certificate's, and it is valid at `now` and still `margin`
    later; with `hosts`, it names exactly those; with `bundle`, a CA in it signed the certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        return False
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo):
        return False
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc - margin:
        return False
    if hosts is not None:
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        if {str(n.value) for n in names} != {str(_san(h).value) for h in hosts}:
            return False
    return bundle is None or issuer_in(cert_pem, bundle) is not None


def plan(state: Optional[WebhookCerts], hosts: Sequence[str], now: Optional[dt.datetime] = None,
         lifetime: dt.timedelta = VALIDITY,
         published: Optional[Collection[x509.Certificate]] = None) -> WebhookCerts:
    """The next state of the Secret (the same object when nothing is due; see the module's docstring).

    `published`: the CAs the webhook configuration carried when this check started; None when there is no
    configuration to wait for (nothing verifies the certificate but whoever holds the Secret)."""
    now = now or _now()
    check = check_interval(lifetime)
    # Without a Secret (deleted to rotate at once) the CAs the configuration carries stay while they are valid:
    # replicas still serving the old certificate keep working until they load the new one.
    bundle = cas(state.ca_pem) if state else list(published or [])
    live = [ca for ca in bundle if ca.not_valid_after_utc > now]
    if state is None or not servable(state.cert_pem, state.key_pem, now, check, hosts, bundle):
        fresh = generate(hosts, now, lifetime)
        return replace(fresh, ca_pem=join([*live, *cas(fresh.ca_pem)]))
    new = state
    if new.next_cert_pem:
        next_ca = issuer_in(new.next_cert_pem, bundle)
        if next_ca is None or not servable(new.next_cert_pem, new.next_key_pem, now, check, hosts, bundle):
            new = replace(new, next_cert_pem=b"", next_key_pem=b"", next_since=None)  # made again below
        elif new.next_since is None:  # (lost) the wait for step 2 starts now
            new = replace(new, next_since=now)
        elif (published is None or next_ca in published) and now - new.next_since >= check:
            new = WebhookCerts(ca_pem=new.ca_pem, cert_pem=new.next_cert_pem, key_pem=new.next_key_pem)
    if not new.next_cert_pem and now >= renew_at(new.cert_pem):
        made = generate(hosts, now, lifetime)
        new = replace(new, ca_pem=join([*bundle, *cas(made.ca_pem)]), next_cert_pem=made.cert_pem,
                      next_key_pem=made.key_pem, next_since=now)
    keep = [issuer_in(p, cas(new.ca_pem)) for p in (new.cert_pem, new.next_cert_pem) if p]
    kept = [ca for ca in cas(new.ca_pem) if ca.not_valid_after_utc > now or ca in keep]
    if kept != cas(new.ca_pem):
        new = replace(new, ca_pem=join(kept))
    return state if new == state else new
