"""The webhook certificate's lifecycle: the rotation schedule (certs.plan), the Secret and the two-CA caBundle
(webhook.maintain, two replicas on one in-memory API), and the reload of a running server: kopf's real HTTPS
server on loopback, connected to before and after a rotation (the peer certificate's serial and notAfter)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from kestrel_operator.serving import certs, metrics, webhook
from kestrel_operator.settings import Serving
from tests.operator.fake_api import FakeApi

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
HOSTS = ("127.0.0.1",)
CONFIG = "kestrel.kestrel.dev"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def leaf(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# ------------------------------------------------------------------------------------------ the schedule

def test_default_schedule_one_year_renewed_at_two_thirds_checked_every_minute():
    c = certs.generate(["svc.ns.svc"], T0)
    assert leaf(c.cert_pem).not_valid_after_utc == T0 + dt.timedelta(days=365)
    assert certs.renew_at(c.cert_pem) == T0 - dt.timedelta(minutes=5) + (dt.timedelta(days=365, minutes=5)) * 2 / 3
    assert certs.check_interval(certs.VALIDITY) == dt.timedelta(seconds=60)
    assert certs.check_interval(dt.timedelta(seconds=60)) == dt.timedelta(seconds=5)
    # The CA and its certificate expire together: a dropped (expired) CA can have no live certificate left.
    assert leaf(c.ca_pem).not_valid_after_utc == leaf(c.cert_pem).not_valid_after_utc


def run_schedule(lifetime: float, until: float, step: float) -> list[tuple[float, int, bool, bool]]:
    """certs.plan every `step` seconds, publishing its bundle after each check as webhook.maintain does; returns
    (time, CAs in the bundle, a certificate waiting, served certificate changed) at each change."""
    life = dt.timedelta(seconds=lifetime)
    state = certs.plan(None, HOSTS, T0, life, None)
    published = certs.cas(state.ca_pem)
    changes = []
    t = 0.0
    while t < until:
        t += step
        new = certs.plan(state, HOSTS, at(t), life, published)
        if new is not state:
            changes.append((t, len(certs.cas(new.ca_pem)), bool(new.next_cert_pem), new.cert_pem != state.cert_pem))
            assert certs.issuer_in(new.cert_pem, certs.cas(new.ca_pem)) is not None  # never serve an untrusted one
            state = new
        published = certs.cas(state.ca_pem)
    return changes


def test_rotation_schedule_two_cas_while_the_old_certificate_lives():
    # 60 s certificates, checked every 5 s (1/12), made 6 s back-dated: renewed at 2/3 of 66 s = 38 s -> the
    # check at 40 s adds the new CA (step 1); one check later its certificate is served (step 2); the old CA goes
    # at the old certificate's expiry (60 s). Then every 40 s again.
    assert run_schedule(60, 125, 5) == [
        (40, 2, True, False), (45, 2, False, True), (60, 1, False, False),
        (80, 2, True, False), (85, 2, False, True), (100, 1, False, False),
        (120, 2, True, False), (125, 2, False, True)]


def test_step_two_waits_for_the_new_ca_in_the_configuration():
    life = dt.timedelta(seconds=60)
    state = certs.plan(None, HOSTS, T0, life, None)
    old_ca = certs.cas(state.ca_pem)
    step1 = certs.plan(state, HOSTS, at(40), life, old_ca)
    assert step1.next_cert_pem and step1.cert_pem == state.cert_pem and len(certs.cas(step1.ca_pem)) == 2
    # Not published yet (e.g. the replica that wrote step 1 died before patching caBundle): no step 2.
    assert certs.plan(step1, HOSTS, at(50), life, old_ca) is step1
    # Published, but less than a check interval ago: no step 2 yet.
    assert certs.plan(step1, HOSTS, at(42), life, certs.cas(step1.ca_pem)) is step1
    step2 = certs.plan(step1, HOSTS, at(46), life, certs.cas(step1.ca_pem))
    assert step2.cert_pem == step1.next_cert_pem and not step2.next_cert_pem
    # Without a webhook configuration nothing else verifies the certificate: no wait for publication.
    assert certs.plan(step1, HOSTS, at(46), life, None).cert_pem == step1.next_cert_pem


def test_an_unusable_certificate_is_replaced_at_once_keeping_live_old_cas():
    life = dt.timedelta(seconds=600)
    state = certs.plan(None, HOSTS, T0, life, None)
    # Other host names (the Service renamed): a new pair now; the old CA stays while it lives (old replicas).
    renamed = certs.plan(state, ("new.ns.svc",), at(10), life, certs.cas(state.ca_pem))
    assert certs.servable(renamed.cert_pem, renamed.key_pem, at(10), hosts=("new.ns.svc",))
    assert certs.cas(renamed.ca_pem)[0] == certs.cas(state.ca_pem)[0] and len(certs.cas(renamed.ca_pem)) == 2
    # A key that is not the certificate's, or a certificate expiring within a check interval: a new pair.
    other = certs.generate(HOSTS, T0, life)
    assert certs.plan(certs.WebhookCerts(state.ca_pem, state.cert_pem, other.key_pem), HOSTS, at(10), life,
                      None).cert_pem != state.cert_pem
    late = certs.plan(state, HOSTS, at(600 - 30), life, None)  # the schedule was missed (operator down)
    assert late.cert_pem != state.cert_pem and not late.next_cert_pem
    # The Secret deleted (to rotate at once): a new pair; the published CA stays for replicas not yet reloaded.
    gone = certs.plan(None, HOSTS, at(10), life, certs.cas(state.ca_pem))
    assert certs.cas(gone.ca_pem)[0] == certs.cas(state.ca_pem)[0] and len(certs.cas(gone.ca_pem)) == 2
    # Expired: its CA is dropped with it.
    expired = certs.plan(state, HOSTS, at(700), life, None)
    assert certs.cas(expired.ca_pem) == [certs.issuer_in(expired.cert_pem, certs.cas(expired.ca_pem))]


# ------------------------------------------------------------------------ the Secret and the caBundle

def api_with_config() -> FakeApi:
    api = FakeApi()
    api.put({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
             "metadata": {"name": CONFIG, "namespace": ""},
             "webhooks": [{"name": "spec.kestrel.dev", "clientConfig": {"url": "https://127.0.0.1:1/kestrel-spec"}},
                          {"name": "other.kestrel.dev", "clientConfig": {"url": "https://127.0.0.1:1/other"}}]})
    return api


def serving(**kw) -> Serving:
    base = {"namespace": "ops", "webhook_secret": "tls", "webhook_hosts": HOSTS, "webhook_config": CONFIG,
            "webhook_cert_seconds": 60}
    return Serving(**{**base, **kw})


def ca_bundle(api: FakeApi) -> list[list[x509.Certificate]]:
    hooks = api.body("ValidatingWebhookConfiguration", CONFIG, "")["webhooks"]
    return [certs.cas(base64.b64decode(h["clientConfig"]["caBundle"])) for h in hooks]


class Clock:
    """The keepers' clock: `t` seconds after `base` (T0 unless given)."""

    def __init__(self, base: dt.datetime = T0) -> None:
        self.base, self.t = base, 0.0

    def at(self, t: float) -> dt.datetime:
        return self.base + dt.timedelta(seconds=t)

    def __call__(self) -> dt.datetime:
        return self.at(self.t)


def test_two_replicas_rotate_through_one_secret_and_a_two_ca_bundle():
    """The leader's and a follower's keepers on one API: whichever checks first advances the Secret, both load
    the new certificate once it is served, and the configuration carried both CAs before either served it."""
    api, clock = api_with_config(), Clock()
    a = webhook.CertKeeper(api, serving(identity="a"), clock=clock)
    b = webhook.CertKeeper(api, serving(identity="b"), clock=clock)
    assert a.check() and b.check()
    assert a.loaded == b.loaded and api.creates == ["Secret/tls"]
    first = a.loaded.cert_pem
    assert ca_bundle(api) == [certs.cas(a.loaded.ca_pem)] * 2
    seen_two = False
    served: list[bytes] = []
    for t in range(5, 130, 5):
        clock.t = t
        for keeper in (a, b) if t % 10 else (b, a):  # either may go first
            keeper.check()
            bundle = ca_bundle(api)[0]
            seen_two |= len(bundle) == 2
            # Whatever a replica serves, the API server trusts.
            assert certs.issuer_in(keeper.loaded.cert_pem, bundle) is not None, t
            served.append(keeper.loaded.cert_pem)
    assert seen_two
    assert a.loaded.cert_pem == b.loaded.cert_pem != first and a.loads == b.loads == 4  # first + 3 rotations
    assert len(set(served)) == 4
    secret = api.body("Secret", "tls", "ops")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) >= {"ca.crt", "tls.crt", "tls.key"}


def test_a_replica_that_loses_the_race_takes_the_winners_state(monkeypatch):
    api = api_with_config()
    webhook.maintain(api, serving(), at(0))
    real_patch = api.patch
    won: list[object] = []

    def patch_after_the_other_replica(api_version, kind, namespace, name, body):
        if kind == "Secret" and not won:  # the other replica writes between this one's read and write
            monkeypatch.setattr(api, "patch", real_patch)
            won.append(webhook.maintain(api, serving(), at(40)))
        return real_patch(api_version, kind, namespace, name, body)

    monkeypatch.setattr(api, "patch", patch_after_the_other_replica)
    state = webhook.maintain(api, serving(), at(40))
    assert state == won[0] and state.next_cert_pem  # one rotation (step 1), not two
    assert len(certs.cas(state.ca_pem)) == 2


def test_the_start_up_check_fails_loudly_when_the_secret_cannot_be_written():
    api = api_with_config()
    api.fail("create", "Secret", 403)
    with pytest.raises(webhook.KubeError, match="403"):
        webhook.server(api, serving())


# ------------------------------------------------------------------------------- a real server reloads

@pytest.fixture
def running_server() -> Iterator:
    """Start ReloadingServer (kopf's WebhookServer on the keeper's context) in a loop thread."""
    servers = []

    def start(keeper: webhook.CertKeeper, port: int, wait: bool = True) -> threading.Event:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def review(request, **_):
            return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                    "response": {"uid": request["request"]["uid"], "allowed": True}}

        async def main():
            gen = webhook.ReloadingServer(keeper, keeper.serving)(review)
            try:
                await gen.__anext__()  # listening
                ready.set()
                await asyncio.Event().wait()
            finally:
                await gen.aclose()  # kopf's server cleans up (closes the site)

        def run() -> None:
            asyncio.set_event_loop(loop)
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main())
            rest = asyncio.all_tasks(loop)  # e.g. aiohttp's handler of a connection still open
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        servers.append((loop, thread))
        assert not wait or ready.wait(30), "the webhook server did not start"
        return ready

    yield start
    for loop, thread in servers:
        loop.call_soon_threadsafe(lambda loop=loop: [t.cancel() for t in asyncio.all_tasks(loop)])
        thread.join(10)


def peer(port: int, cafile_pem: bytes, server_name: str | None = None) -> x509.Certificate:
    """A fresh TLS connection verifying against `cafile_pem` (what caBundle holds); the server's certificate."""
    ctx = ssl.create_default_context(cadata=cafile_pem.decode())
    ctx.check_hostname = server_name is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admission_call(port: int, cafile_pem: bytes) -> dict:
    ctx = ssl.create_default_context(cadata=cafile_pem.decode())
    body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "u1"}}).encode()
    req = urllib.request.Request(f"https://127.0.0.1:{port}/kestrel-spec", data=body,  # noqa: S310 - loopback
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:  # noqa: S310
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:  # kopf answers; any HTTP answer means TLS worked
        return {"status": err.code}


def test_a_running_server_serves_the_rotated_certificate_without_restarting(running_server):
    # The client checks validity against the real time: the schedule is placed so that step 2 (t = 45 s) is now.
    real_now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    api, clock = api_with_config(), Clock(real_now - dt.timedelta(seconds=45))
    port = free_port()
    keeper = webhook.CertKeeper(api, serving(webhook_port=port, webhook_host="127.0.0.1"), clock=clock)
    assert keeper.check()
    running_server(keeper, port)
    first_bundle = base64.b64decode(api.body("ValidatingWebhookConfiguration", CONFIG, "")["webhooks"][0][
        "clientConfig"]["caBundle"])
    before = peer(port, first_bundle, "127.0.0.1")
    assert before.serial_number == leaf(keeper.loaded.cert_pem).serial_number
    # A connection opened before the rotation stays open across it.
    held = ssl.create_default_context(cadata=first_bundle.decode()).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")

    clock.t = 40
    assert keeper.check() is False  # step 1: the new CA is published, the old certificate still served
    two_cas = base64.b64decode(api.body("ValidatingWebhookConfiguration", CONFIG, "")["webhooks"][0][
        "clientConfig"]["caBundle"])
    assert len(certs.cas(two_cas)) == 2
    assert peer(port, two_cas, "127.0.0.1").serial_number == before.serial_number
    clock.t = 45
    assert keeper.check()  # step 2: loaded while running
    after = peer(port, two_cas, "127.0.0.1")
    assert after.serial_number != before.serial_number
    assert after.not_valid_after_utc == clock.at(40 + 60) and before.not_valid_after_utc == clock.at(60)
    assert metrics.WEBHOOK_CERT_EXPIRY._value.get() == after.not_valid_after_utc.timestamp()
    assert admission_call(port, two_cas)["response"]["allowed"] is True  # the HTTP server behind it, same port
    # The old CA alone no longer verifies what is served; the new one alone does (after the old CA is dropped).
    with pytest.raises(ssl.SSLCertVerificationError):
        peer(port, first_bundle, "127.0.0.1")
    clock.t = 61
    keeper.check()
    (only,) = certs.cas(base64.b64decode(api.body("ValidatingWebhookConfiguration", CONFIG, "")["webhooks"][0][
        "clientConfig"]["caBundle"]))
    assert peer(port, only.public_bytes(serialization.Encoding.PEM), "127.0.0.1").serial_number == after.serial_number
    review = json.dumps({"request": {"uid": "held"}}).encode()
    held.sendall(b"POST /kestrel-spec HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(review), review))
    assert held.recv(15) == b"HTTP/1.1 200 OK"  # the connection opened before the rotation still answers
    held.close()
    assert keeper.loads == 2


# --------------------------------------------------------------------------------------- external mode

def rsa_pair(cn: str, days: float = 90) -> tuple[bytes, bytes, bytes]:
    """A cert-manager-like Secret's content: an RSA leaf signed by its own CA (ca.crt, tls.crt, tls.key)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cn}-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), cert.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))


def put_secret(api: FakeApi, ca: bytes, crt: bytes, key: bytes) -> None:
    api.put({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
             "metadata": {"name": "tls", "namespace": "ops"},
             "data": {"ca.crt": base64.b64encode(ca).decode(), "tls.crt": base64.b64encode(crt + ca).decode(),
                      "tls.key": base64.b64encode(key).decode()}})


def test_external_mode_waits_for_the_secret_reloads_renewals_and_writes_nothing(running_server):
    api = api_with_config()
    port = free_port()
    keeper = webhook.server(api, serving(webhook_certs="external", webhook_hosts=(), webhook_port=port,
                                         webhook_host="127.0.0.1")).keeper
    keeper.stop()  # checked by hand below
    assert keeper.loaded is None and keeper.interval() == webhook.WAIT_SECONDS
    ca, crt, key = rsa_pair("first")  # cert-manager issues (RSA, a chain in tls.crt)
    put_secret(api, ca, crt, key)
    ready = running_server(keeper, port, wait=False)  # started before any certificate: it waits for one
    assert not ready.wait(2)
    assert keeper.check()
    assert ready.wait(30)
    assert peer(port, ca).serial_number == leaf(crt).serial_number
    assert keeper.interval() == 60
    # cert-manager renews (here also another key type and CA: the new context replaces the old one whole).
    renewed = certs.generate(HOSTS, lifetime=dt.timedelta(days=90))
    put_secret(api, renewed.ca_pem, renewed.cert_pem, renewed.key_pem)
    assert keeper.check()
    assert peer(port, renewed.ca_pem).serial_number == leaf(renewed.cert_pem).serial_number
    # A Secret emptied by hand: keep serving the loaded one.
    api.put({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": "ops"}, "data": {}})
    assert keeper.check() is False and keeper.loaded.cert_pem == renewed.cert_pem + renewed.ca_pem
    writes = [c for c in api.calls if c[0] in ("create", "patch")]
    assert writes == []
    assert "caBundle" not in json.dumps(api.body("ValidatingWebhookConfiguration", CONFIG, ""))


def test_operator_mode_adopts_a_certificate_cert_manager_wrote():
    """Switching to cert-manager: operator-mode replicas still running take cert-manager's Secret as it is."""
    ca, crt, key = rsa_pair("cert-manager", days=90)
    state = certs.WebhookCerts(ca_pem=ca, cert_pem=crt + ca, key_pem=key)
    now = dt.datetime.now(dt.timezone.utc)
    assert certs.plan(state, HOSTS, now, certs.VALIDITY, certs.cas(ca)) is state
