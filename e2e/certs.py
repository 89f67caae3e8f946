"""The e2e cluster's PKI: our own CA, the API server's serving certificate, the service-account key pair and
client certificates (the kubelet's, the API server's towards the kubelet). Pure file writing, no processes.

Our own CA (rather than the API server's self-signed cert) lets every client verify TLS instead of skipping
verification, the way a real cluster's kubeconfig does.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _name(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]
                     + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs])


def _issue(ca_key: rsa.RSAPrivateKey, ca_name: x509.Name, subject: x509.Name, usage: x509.ObjectIdentifier,
           sans: Sequence[x509.GeneralName] = ()) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A leaf certificate signed by our CA, for serving (SERVER_AUTH) or as a client identity (CLIENT_AUTH)."""
    now = _dt.datetime.now(_dt.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_pair(folder: Path, stem: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> tuple[Path, Path]:
    crt_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return crt_path, key_path


def issue_client_cert(pki: dict[str, Path], stem: str, user: str, groups: Sequence[str] = ()) -> tuple[Path, Path]:
    """A client certificate from our CA (the API server authenticates it as `user` in `groups`)."""
    ca_cert = x509.load_pem_x509_certificate(pki["ca.crt"].read_bytes())
    ca_key = serialization.load_pem_private_key(pki["ca.key"].read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    cert, key = _issue(ca_key, ca_cert.subject, _name(user, groups), x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
    crt_path, key_path = _write_pair(pki["ca.crt"].parent, stem, cert, key)
    pki[f"{stem}.crt"], pki[f"{stem}.key"] = crt_path, key_path
    return crt_path, key_path


def issue_serving_cert(pki: dict[str, Path], stem: str, ips: Sequence[str]) -> tuple[Path, Path]:
    """A serving certificate from our CA for `ips` (e.g. a webhook server on 127.0.0.1 that the API server calls by
    URL, verifying it against our CA as the caBundle)."""
    ca_cert = x509.load_pem_x509_certificate(pki["ca.crt"].read_bytes())
    ca_key = serialization.load_pem_private_key(pki["ca.key"].read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert, key = _issue(ca_key, ca_cert.subject, _name(stem), x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, sans)
    crt_path, key_path = _write_pair(pki["ca.crt"].parent, stem, cert, key)
    pki[f"{stem}.crt"], pki[f"{stem}.key"] = crt_path, key_path
    return crt_path, key_path


def make_pki(folder: Path, ips: Sequence[str] = ("127.0.0.1",)) -> dict[str, Path]:
    """A CA, an API-server serving cert for `ips` (its addresses, the `kubernetes` Service VIP among them) and the
    in-cluster names, and the service-account key pair.

    Our own CA (rather than the API server's self-signed cert) lets every client verify TLS instead
    of skipping verification, the way a real cluster's kubeconfig does; it also signs the client
    certificates of the kubelet and of the API server towards the kubelet (issue_client_cert).
    """
    folder.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = _name("kestrel-e2e-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
        x509.DNSName("kubernetes.default.svc"), x509.DNSName("kubernetes.default.svc.cluster.local"),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)),
    ]
    srv_cert, srv_key = _issue(ca_key, ca_name, _name("kube-apiserver"),
                               x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, sans)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    paths = {
        "ca.crt": folder / "ca.crt",
        "ca.key": folder / "ca.key",
        "sa.key": folder / "sa.key",
        "sa.pub": folder / "sa.pub",
    }
    paths["ca.crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["ca.key"], ca_key)
    paths["apiserver.crt"], paths["apiserver.key"] = _write_pair(folder, "apiserver", srv_cert, srv_key)
    _write_key(paths["sa.key"], sa_key)
    paths["sa.pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths
