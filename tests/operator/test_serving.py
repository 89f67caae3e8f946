"""Webhook certificates (a real TLS handshake), leader election on a Lease, and the metrics endpoint."""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import threading
import urllib.request

import pytest

from kestrel_operator.serving import certs, leader, metrics, webhook
from kestrel_operator.settings import Serving, SettingsError, from_env
from tests.operator.fake_api import FakeApi


def _handshake(c: certs.WebhookCerts, tmp_path, server_name: str) -> str:
    """Serve one TLS connection with `c` on loopback; connect verifying against the CA only, as the API
    server does with caBundle. Returns the verified peer's subject CN."""
    cert, key = webhook.write_files(c, tmp_path)
    srv_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    srv_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with srv_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except ssl.SSLError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ssl.create_default_context(cadata=c.ca_pem.decode())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname=server_name) as tls:
            assert tls.recv(2) == b"ok"
            return dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
    finally:
        listener.close()
        thread.join(5)


def test_serving_certificate_verifies_for_its_hosts_only(tmp_path):
    c = certs.generate(["kestrel-webhook.ops.svc", "127.0.0.1"])
    assert _handshake(c, tmp_path, "kestrel-webhook.ops.svc") == "kestrel-webhook.ops.svc"
    assert _handshake(c, tmp_path, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(c, tmp_path, "other.ops.svc")
    assert (tmp_path / "tls.key").stat().st_mode & 0o077 == 0


def test_certificates_are_replaced_when_hosts_change_or_expiry_nears():
    hosts = ["a.ns.svc"]
    c = certs.generate(hosts)
    now = dt.datetime.now(dt.timezone.utc)
    assert certs.servable(c.cert_pem, c.key_pem, now, hosts=hosts, bundle=certs.cas(c.ca_pem))
    assert not certs.servable(c.cert_pem, c.key_pem, now, hosts=["b.ns.svc"])
    assert now + dt.timedelta(days=240) < certs.renew_at(c.cert_pem) < now + dt.timedelta(days=245)
    other = certs.generate(hosts)
    assert not certs.servable(c.cert_pem, c.key_pem, now, bundle=certs.cas(other.ca_pem))  # wrong CA


def _vwc(api: FakeApi) -> None:
    api.put({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
             "metadata": {"name": "kestrel.kestrel.dev", "namespace": ""},
             "webhooks": [{"name": "spec.kestrel.dev", "clientConfig": {"url": "https://127.0.0.1:1/kestrel-spec"}}]})


def test_replicas_share_one_certificate_and_publish_its_ca():
    api = FakeApi()
    _vwc(api)
    serving = Serving(namespace="ops", webhook_secret="tls", webhook_hosts=("svc.ops.svc",),
                      webhook_config="kestrel.kestrel.dev")
    first = webhook.maintain(api, serving)
    second = webhook.maintain(api, serving)  # the second replica takes the stored one
    assert first == second
    bundle = api.body("ValidatingWebhookConfiguration", "kestrel.kestrel.dev", "")["webhooks"][0]["clientConfig"]
    assert base64.b64decode(bundle["caBundle"]) == first.ca_pem
    # New host names (e.g. the release renamed): a new certificate at once; the old CA stays while it is valid.
    renamed = Serving(namespace="ops", webhook_secret="tls", webhook_hosts=("new.ops.svc",))
    renewed = webhook.maintain(api, renamed)
    assert renewed.cert_pem != first.cert_pem
    assert certs.servable(renewed.cert_pem, renewed.key_pem, dt.datetime.now(dt.timezone.utc),
                          hosts=["new.ops.svc"], bundle=certs.cas(renewed.ca_pem))
    assert certs.cas(renewed.ca_pem)[0] == certs.cas(first.ca_pem)[0]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_exactly_one_leader_and_takeover_after_the_lease_expires():
    api, clock = FakeApi(), Clock()
    started = []
    a = leader.LeaderElector(api, "ops", "lease", "a", 15, clock=clock, on_started_leading=lambda: started.append("a"))
    b = leader.LeaderElector(api, "ops", "lease", "b", 15, clock=clock, on_started_leading=lambda: started.append("b"))
    assert a.step() and not b.step()
    for _ in range(10):  # a renews every 3 s; b never gets it
        clock.t += 3
        assert a.step() and not b.step()
    assert a.is_leader() and not b.is_leader()
    # a dies: b must watch the same record for a full lease duration before taking over.
    clock.t += 14
    assert not b.step()
    assert not a.is_leader()  # a, had it survived a partition, stopped after 2/3 of the lease
    clock.t += 2
    assert b.step()
    lease = api.body("Lease", "lease", "ops")["spec"]
    assert (lease["holderIdentity"], lease["leaseTransitions"]) == ("b", 1)
    assert started == ["a", "b"] and b.is_leader()


def test_a_stale_read_cannot_win():
    api, clock = FakeApi(), Clock()
    a = leader.LeaderElector(api, "ops", "lease", "a", 15, clock=clock)
    b = leader.LeaderElector(api, "ops", "lease", "b", 15, clock=clock)
    assert a.step()
    stale = api.get("coordination.k8s.io/v1", "Lease", "ops", "lease")
    assert a.step()  # a renews: the resourceVersion b would send is old
    assert not api.patch("coordination.k8s.io/v1", "Lease", "ops", "lease",
                         {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]},
                          "spec": {"holderIdentity": "b"}})
    assert not b.step()


def test_release_hands_over_at_once():
    api, clock = FakeApi(), Clock()
    a = leader.LeaderElector(api, "ops", "lease", "a", 15, clock=clock)
    b = leader.LeaderElector(api, "ops", "lease", "b", 15, clock=clock)
    assert a.step()
    a.stop(release=True)
    assert not a.is_leader()
    assert b.step()


def test_metrics_are_served(monkeypatch):
    port = socket.create_server(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    metrics.serve(number, addr="127.0.0.1")
    body = {"kind": "ClassificationTrain", "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [
        {"manager": "kubectl", "time": "2026-01-01T00:00:10Z"},
        {"manager": "kestrel-operator", "subresource": "status", "time": "2026-01-01T00:00:30Z"}]}}
    now = dt.datetime(2026, 1, 1, 0, 0, 13, tzinfo=dt.timezone.utc)
    before = metrics.APPLY_TO_MPIJOB.labels(kind="ClassificationTrain")._sum.get()
    metrics.observe(body, "ok", ["ConfigMap/x-g1-spec", "MPIJob/x-g1"], now=now)
    metrics.observe(body, "error", [])
    # 3 s from the user's write (10 s), not the status write (30 s) nor the creation (0 s).
    assert metrics.APPLY_TO_MPIJOB.labels(kind="ClassificationTrain")._sum.get() - before == pytest.approx(3.0)
    text = urllib.request.urlopen(f"http://127.0.0.1:{number}/metrics", timeout=5).read().decode()  # noqa: S310
    assert 'kestrel_reconciles_total{kind="ClassificationTrain",result="ok"}' in text
    assert 'kestrel_reconcile_errors_total{kind="ClassificationTrain"}' in text
    assert 'kestrel_apply_to_mpijob_seconds_bucket{kind="ClassificationTrain",le="5.0"}' in text


def test_serving_settings_from_env():
    s = from_env({"KESTREL_POD_NAMESPACE": "ops", "KESTREL_POD_NAME": "op-1", "KESTREL_LEADER_LEASE": "l",
                  "KESTREL_WEBHOOK_PORT": "9443", "KESTREL_WEBHOOK_HOSTS": "a.ops.svc, 127.0.0.1",
                  "KESTREL_WEBHOOK_SECRET": "t", "KESTREL_METRICS_PORT": "8081"}).serving
    assert (s.identity, s.webhook_hosts, s.metrics_port) == ("op-1", ("a.ops.svc", "127.0.0.1"), 8081)
    with pytest.raises(SettingsError, match="KESTREL_POD_NAMESPACE"):
        from_env({"KESTREL_LEADER_LEASE": "l"})
    with pytest.raises(SettingsError, match="KESTREL_WEBHOOK_HOSTS"):
        from_env({"KESTREL_WEBHOOK_PORT": "9443"})
    with pytest.raises(SettingsError, match="not a TCP port"):
        from_env({"KESTREL_METRICS_PORT": "70000"})
    assert (s.webhook_certs, s.webhook_cert_seconds) == ("operator", 365 * 24 * 3600)
    web = {"KESTREL_POD_NAMESPACE": "ops", "KESTREL_WEBHOOK_PORT": "9443", "KESTREL_WEBHOOK_SECRET": "tls"}
    ext = from_env({**web, "KESTREL_WEBHOOK_CERTS": "external"}).serving  # cert-manager names the hosts
    assert (ext.webhook_certs, ext.webhook_hosts) == ("external", ())
    short = from_env({**web, "KESTREL_WEBHOOK_HOSTS": "h", "KESTREL_WEBHOOK_CERT_SECONDS": "60"}).serving
    assert short.webhook_cert_seconds == 60
    with pytest.raises(SettingsError, match="KESTREL_WEBHOOK_CERT_SECONDS=59 must be >= 60"):
        from_env({**web, "KESTREL_WEBHOOK_HOSTS": "h", "KESTREL_WEBHOOK_CERT_SECONDS": "59"})
    with pytest.raises(SettingsError, match="KESTREL_WEBHOOK_CERTS='cert-manager' is not one of operator, external"):
        from_env({**web, "KESTREL_WEBHOOK_CERTS": "cert-manager"})
    with pytest.raises(SettingsError, match="KESTREL_WEBHOOK_SECRET"):
        from_env({"KESTREL_WEBHOOK_PORT": "9443", "KESTREL_WEBHOOK_HOSTS": "h"})
