"""The admission webhook's TLS: one certificate per installation, shared by every replica.

At start each replica reads the Secret `webhook_secret` in its namespace. If it is missing, names other hosts,
or expires within certs.RENEW_BEFORE, the replica generates a new CA and certificate and writes them (create,
or a patch conditional on the resourceVersion it read; the loser of a race re-reads and takes the winner's).
Then it puts that CA into every webhook of the ValidatingWebhookConfiguration `webhook_config` (again
conditional, retried on conflict) and serves with the certificate through kopf's WebhookServer. Replicas
therefore always serve certificates the API server trusts, and a certificate is rotated by the first start
after it comes close to expiry (or by deleting the Secret and restarting the operator).
"""

from __future__ import annotations

import base64
import logging
import tempfile
from pathlib import Path
from typing import Any, Optional

from kestrel_operator.kube import KubeApi, KubeError
from kestrel_operator.serving import certs
from kestrel_operator.settings import Serving

log = logging.getLogger(__name__)
ADMISSION_API = "admissionregistration.k8s.io/v1"
# kopf routes a request to the validating handler whose id is the last path segment (the chart's path).
HANDLER_ID = "kestrel-spec"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _from_secret(secret: Optional[dict[str, Any]]) -> Optional[certs.WebhookCerts]:
    data = (secret or {}).get("data") or {}
    try:
        return certs.WebhookCerts(ca_pem=base64.b64decode(data["ca.crt"]), cert_pem=base64.b64decode(data["tls.crt"]),
                                  key_pem=base64.b64decode(data["tls.key"]))
    except (KeyError, ValueError):
        return None


def _secret_data(c: certs.WebhookCerts) -> dict[str, str]:
    return {"ca.crt": _b64(c.ca_pem), "tls.crt": _b64(c.cert_pem), "tls.key": _b64(c.key_pem)}


def shared_certificate(api: KubeApi, serving: Serving, attempts: int = 5) -> certs.WebhookCerts:
    """The installation's certificate from its Secret, generated or renewed first when needed."""
    name, ns, hosts = serving.webhook_secret, serving.namespace, serving.webhook_hosts
    for _ in range(attempts):
        secret = api.get("v1", "Secret", ns, name)
        current = _from_secret(secret)
        if current is not None and certs.still_good(current, hosts):
            return current
        fresh = certs.generate(hosts)
        if secret is None:
            body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                    "metadata": {"name": name, "namespace": ns,
                                 "labels": {"app.kubernetes.io/managed-by": "kestrel-operator"}},
                    "data": _secret_data(fresh)}
            written = api.create(body)
        else:
            written = api.patch("v1", "Secret", ns, name, {
                "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]}, "data": _secret_data(fresh)})
        if written:
            log.info("webhook: wrote a new serving certificate for %s to Secret %s/%s", ", ".join(hosts), ns, name)
            return fresh
    raise KubeError(f"webhook: Secret {ns}/{name} kept changing under us; gave up after {attempts} attempts")


def publish_ca(api: KubeApi, config_name: str, ca_pem: bytes, attempts: int = 5) -> bool:
    """Set caBundle of every webhook in the configuration; False if it does not exist (nothing to do)."""
    for _ in range(attempts):
        config = api.get(ADMISSION_API, "ValidatingWebhookConfiguration", "", config_name)
        if config is None:
            log.warning("webhook: ValidatingWebhookConfiguration %s not found; its caBundle is not set", config_name)
            return False
        webhooks = config.get("webhooks") or []
        if all((w.get("clientConfig") or {}).get("caBundle") == _b64(ca_pem) for w in webhooks):
            return True
        for w in webhooks:
            w.setdefault("clientConfig", {})["caBundle"] = _b64(ca_pem)
        patch = {"metadata": {"resourceVersion": config["metadata"]["resourceVersion"]}, "webhooks": webhooks}
        if api.patch(ADMISSION_API, "ValidatingWebhookConfiguration", "", config_name, patch):
            log.info("webhook: caBundle of %s updated", config_name)
            return True
    raise KubeError(f"webhook: {config_name} kept changing under us; gave up after {attempts} attempts")


def write_files(c: certs.WebhookCerts, folder: Optional[Path] = None) -> tuple[Path, Path]:
    """The certificate and key as files for kopf's server (a private temp folder; /tmp in the pod)."""
    folder = folder or Path(tempfile.mkdtemp(prefix="kestrel-webhook-"))
    cert, key = folder / "tls.crt", folder / "tls.key"
    key.touch(mode=0o600)
    key.write_bytes(c.key_pem)
    cert.write_bytes(c.cert_pem)
    return cert, key


def server(api: KubeApi, serving: Serving) -> Any:
    """A kopf.WebhookServer with the shared certificate, after publishing its CA."""
    import kopf

    shared = shared_certificate(api, serving)
    if serving.webhook_config:
        publish_ca(api, serving.webhook_config, shared.ca_pem)
    certfile, pkeyfile = write_files(shared)
    return kopf.WebhookServer(addr=serving.webhook_host, port=serving.webhook_port, host=serving.webhook_hosts[0],
                              certfile=str(certfile), pkeyfile=str(pkeyfile), cadata=shared.ca_pem)
