"""The admission webhook's TLS: one certificate per installation, shared by every replica and kept current
while the operator runs.

Every replica (the leader and its followers alike) runs a `CertKeeper`: at start and then every check interval
(1/12 of the certificate's lifetime, at most 60 s) it reads the Secret `webhook_secret` in its namespace, and
- with KESTREL_WEBHOOK_CERTS=operator (the default) advances the rotation that certs.py describes (`maintain`):
  writes the Secret's next state (create, or a merge patch conditional on the resourceVersion it read: of two
  replicas one wins and the other takes the winner's state), then puts the Secret's CA bundle into caBundle of
  every webhook of the ValidatingWebhookConfiguration `webhook_config` (conditional too), before it serves
  anything new;
- with KESTREL_WEBHOOK_CERTS=external (cert-manager writes the Secret and its cainjector the caBundle) only reads
  the Secret.
When the Secret's serving pair differs from the one loaded, the keeper builds a new SSLContext with it. The
listening socket keeps one SSLContext whose sni_callback (which OpenSSL calls for every ClientHello, with or
without SNI) hands each new handshake the current context: the server is never restarted, open connections
are untouched, and a certificate of another key type replaces the old one cleanly (loading it into the
listening context itself would keep serving an ECDSA certificate next to a new RSA one).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import ssl
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Optional

from cryptography import x509

from kestrel_operator.kube import KubeApi, KubeError
from kestrel_operator.serving import certs, metrics
from kestrel_operator.settings import Serving

log = logging.getLogger(__name__)
ADMISSION_API = "admissionregistration.k8s.io/v1"
VWC = "ValidatingWebhookConfiguration"
# kopf routes a request to the validating handler whose id is the last path segment (the chart's path).
HANDLER_ID = "kestrel-spec"
# When the waiting certificate (Secret keys next.crt, next.key) was made: step 2 of a rotation waits one check
# interval after it.
NEXT_SINCE = "kestrel.dev/next-certificate-since"
# How often an external-mode replica looks for a Secret that has no usable certificate yet.
WAIT_SECONDS = 5.0


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _from_secret(secret: Optional[dict[str, Any]]) -> Optional[certs.WebhookCerts]:
    """The Secret's state; None when it is missing or holds no serving pair."""
    data = (secret or {}).get("data") or {}
    if not data.get("tls.crt") or not data.get("tls.key"):
        return None
    since = ((secret or {}).get("metadata", {}).get("annotations") or {}).get(NEXT_SINCE)
    try:
        return certs.WebhookCerts(
            ca_pem=base64.b64decode(data.get("ca.crt") or ""), cert_pem=base64.b64decode(data["tls.crt"]),
            key_pem=base64.b64decode(data["tls.key"]), next_cert_pem=base64.b64decode(data.get("next.crt") or ""),
            next_key_pem=base64.b64decode(data.get("next.key") or ""),
            next_since=dt.datetime.fromisoformat(since) if since else None)
    except ValueError:
        return None


def _secret_fields(c: certs.WebhookCerts) -> tuple[dict[str, Optional[str]], dict[str, Optional[str]]]:
    """data and annotations of the Secret holding `c`; None values remove a key in a merge patch."""
    data = {"ca.crt": _b64(c.ca_pem), "tls.crt": _b64(c.cert_pem), "tls.key": _b64(c.key_pem),
            "next.crt": _b64(c.next_cert_pem) if c.next_cert_pem else None,
            "next.key": _b64(c.next_key_pem) if c.next_key_pem else None}
    since = c.next_since.isoformat() if c.next_cert_pem and c.next_since else None
    return data, {NEXT_SINCE: since}


def _write_secret(api: KubeApi, serving: Serving, secret: Optional[dict[str, Any]], c: certs.WebhookCerts) -> bool:
    """Create the Secret, or patch it conditionally on the version read; False when another replica was first."""
    name, ns = serving.webhook_secret, serving.namespace
    data, annotations = _secret_fields(c)
    if secret is None:
        return bool(api.create({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "kestrel-operator"},
                         "annotations": {k: v for k, v in annotations.items() if v is not None}},
            "data": {k: v for k, v in data.items() if v is not None}}))
    return api.patch("v1", "Secret", ns, name, {
        "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"], "annotations": annotations},
        "data": data})


def published_cas(config: Optional[dict[str, Any]]) -> Optional[list[Any]]:
    """The CAs every webhook of the configuration trusts; None without a configuration (or webhooks)."""
    hooks = (config or {}).get("webhooks") or []
    if not hooks:
        return None
    bundles = [certs.cas(base64.b64decode((h.get("clientConfig") or {}).get("caBundle") or "")) for h in hooks]
    return [ca for ca in bundles[0] if all(ca in other for other in bundles[1:])]


def _describe(old: Optional[certs.WebhookCerts], new: certs.WebhookCerts) -> str:
    """What a write did, for the log."""
    count = len(certs.cas(new.ca_pem))
    if old is None or (new.cert_pem != old.cert_pem and new.cert_pem != old.next_cert_pem):
        return f"new CA and serving certificate (none usable before); CA bundle of {count}"
    if new.cert_pem != old.cert_pem:
        return f"rotation step 2: the new certificate is served from now on; CA bundle of {count}"
    if new.next_cert_pem and new.next_cert_pem != old.next_cert_pem:
        return f"rotation step 1: new CA added to the bundle (now {count}), its certificate waits for it"
    if len(certs.cas(old.ca_pem)) > count:
        return f"expired CA dropped; CA bundle of {count}"
    return "state updated"


def maintain(api: KubeApi, serving: Serving, now: Optional[dt.datetime] = None,
             attempts: int = 5) -> certs.WebhookCerts:
    """One check in operator mode: the Secret advanced by certs.plan, then its CA bundle published. Returns the
    Secret's state (its cert_pem/key_pem are what to serve)."""
    name, ns = serving.webhook_secret, serving.namespace
    lifetime = dt.timedelta(seconds=serving.webhook_cert_seconds)
    for _ in range(attempts):
        secret = api.get("v1", "Secret", ns, name)
        config = api.get(ADMISSION_API, VWC, "", serving.webhook_config) if serving.webhook_config else None
        current = _from_secret(secret)
        wanted = certs.plan(current, serving.webhook_hosts, now or _utcnow(), lifetime, published_cas(config))
        if wanted is not current:
            if not _write_secret(api, serving, secret, wanted):
                continue  # another replica wrote first: take its state
            log.info("webhook: Secret %s/%s: %s", ns, name, _describe(current, wanted))
        if serving.webhook_config:
            publish_ca(api, serving.webhook_config, wanted.ca_pem)
        return wanted
    raise KubeError(f"webhook: Secret {ns}/{name} kept changing under us; gave up after {attempts} attempts")


def publish_ca(api: KubeApi, config_name: str, ca_pem: bytes, attempts: int = 5) -> bool:
    """Set caBundle of every webhook in the configuration to `ca_pem` (one or more PEM certificates); False if
    the configuration does not exist (nothing to do)."""
    for _ in range(attempts):
        config = api.get(ADMISSION_API, VWC, "", config_name)
        if config is None:
            log.warning("webhook: ValidatingWebhookConfiguration %s not found; its caBundle is not set", config_name)
            return False
        webhooks = config.get("webhooks") or []
        if all((w.get("clientConfig") or {}).get("caBundle") == _b64(ca_pem) for w in webhooks):
            return True
        for w in webhooks:
            w.setdefault("clientConfig", {})["caBundle"] = _b64(ca_pem)
        patch = {"metadata": {"resourceVersion": config["metadata"]["resourceVersion"]}, "webhooks": webhooks}
        if api.patch(ADMISSION_API, VWC, "", config_name, patch):
            log.info("webhook: caBundle of %s updated (%d CA)", config_name, len(certs.cas(ca_pem)))
            return True
    raise KubeError(f"webhook: {config_name} kept changing under us; gave up after {attempts} attempts")


def write_files(c: certs.WebhookCerts, folder: Optional[Path] = None) -> tuple[Path, Path]:
    """The serving certificate and key as files (a private temp folder; /tmp in the pod)."""
    folder = folder or Path(tempfile.mkdtemp(prefix="kestrel-webhook-"))
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls.crt", folder / "tls.key"
    key.touch(mode=0o600)
    key.write_bytes(c.key_pem)
    cert.write_bytes(c.cert_pem)
    return cert, key


class CertKeeper:
    """The serving certificate of this replica: `check()` once, then `start()` a thread that checks every
    interval. `context` is the listening SSLContext; each handshake gets the context of the pair loaded last."""

    def __init__(self, api: KubeApi, serving: Serving, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.api, self.serving, self.clock = api, serving, clock
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.sni_callback = self._select
        self.loaded: Optional[certs.WebhookCerts] = None  # its cert_pem/key_pem are served
        self.files: Optional[tuple[Path, Path]] = None  # the first pair's files (kopf's server reads them once)
        self.loads = 0
        self._active: Optional[ssl.SSLContext] = None
        self._folder = Path(tempfile.mkdtemp(prefix="kestrel-webhook-"))
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._waiting_logged = False

    def _select(self, sslobj: Any, server_name: Optional[str], context: ssl.SSLContext) -> None:
        active = self._active
        if active is not None:
            sslobj.context = active

    @property
    def external(self) -> bool:
        return self.serving.webhook_certs == "external"

    def interval(self) -> float:
        """Seconds to the next check: 1/12 of the served certificate's lifetime, at most 60 s."""
        if self.loaded is None:
            return WAIT_SECONDS
        lifetime = certs.lifetime_of(self.loaded.cert_pem) if self.external \
            else dt.timedelta(seconds=self.serving.webhook_cert_seconds)
        return certs.check_interval(lifetime).total_seconds()

    def check(self) -> bool:
        """One check (see the module's docstring); True when it loaded a new serving pair."""
        now = self.clock()
        if self.external:
            state = _from_secret(self.api.get("v1", "Secret", self.serving.namespace, self.serving.webhook_secret))
            if state is None or not certs.servable(state.cert_pem, state.key_pem, now):
                if self.loaded is None and not self._waiting_logged:
                    log.info("webhook: waiting for a usable certificate in Secret %s/%s (written by cert-manager)",
                             self.serving.namespace, self.serving.webhook_secret)
                    self._waiting_logged = True
                elif self.loaded is not None:
                    log.warning("webhook: Secret %s/%s holds no usable certificate; still serving the loaded one",
                                self.serving.namespace, self.serving.webhook_secret)
                return False
        else:
            state = maintain(self.api, self.serving, now)
        if self.loaded is not None and (state.cert_pem, state.key_pem) == (self.loaded.cert_pem, self.loaded.key_pem):
            return False
        self._load(state)
        return True

    def _load(self, state: certs.WebhookCerts) -> None:
        first = self.files is None
        folder = self._folder / ("first" if first else f"load-{self.loads}")
        cert, key = write_files(state, folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cert, key)
            if first:  # the listening context's own, used should a handshake ever skip the callback
                self.context.load_cert_chain(cert, key)
        finally:
            if not first:
                key.unlink()
                cert.unlink()
                folder.rmdir()
        self._active, self.loaded = context, state
        self.loads += 1
        if first:
            self.files = (cert, key)
        leaf = x509.load_pem_x509_certificate(state.cert_pem)
        metrics.WEBHOOK_CERT_EXPIRY.set(leaf.not_valid_after_utc.timestamp())
        log.info("webhook: serving certificate %x (valid until %s)%s", leaf.serial_number,
                 leaf.not_valid_after_utc.isoformat(), "" if first else ", loaded while running")

    def run(self) -> None:
        while not self._stop.wait(self.interval()):
            try:
                self.check()
            except Exception as err:  # an API hiccup: serve what is loaded, try again at the next interval
                log.warning("webhook: certificate check failed (%s: %s); next try in %.0f s", type(err).__name__,
                            err, self.interval())

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="webhook-certs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


class ReloadingServer:
    """What kopf runs as settings.admission.server: kopf's own WebhookServer on the keeper's listening context,
    started once the keeper has a certificate (in external mode cert-manager may not have written one yet)."""

    def __init__(self, keeper: CertKeeper, serving: Serving) -> None:
        self.keeper, self.serving = keeper, serving

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        import kopf

        while self.keeper.files is None:
            await asyncio.sleep(1)
        certfile, pkeyfile = self.keeper.files  # never rewritten: kopf restarts its server when they change
        hosts = self.serving.webhook_hosts
        inner = kopf.WebhookServer(addr=self.serving.webhook_host, port=self.serving.webhook_port,
                                   host=hosts[0] if hosts else None, context=self.keeper.context,
                                   certfile=str(certfile), pkeyfile=str(pkeyfile))
        async with inner:
            async for client_config in inner(fn):
                yield client_config


def server(api: KubeApi, serving: Serving) -> ReloadingServer:
    """The webhook server with its certificate keeper running. In operator mode the first check happens here
    (its errors stop the start, as a broken RBAC should); in external mode the Secret may come later."""
    keeper = CertKeeper(api, serving)
    try:
        keeper.check()
    except (KubeError, OSError) as err:
        if not keeper.external:
            raise
        log.warning("webhook: %s; trying again in %.0f s", err, keeper.interval())
    keeper.start()
    return ReloadingServer(keeper, serving)
