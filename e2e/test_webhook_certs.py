"""The admission webhook's certificate lifecycle against the real API server (issue 28, item 6 and done-when (f)).

- Rotation while running: two operator replicas (leader election on; the follower serves too) listen on one port
  (kopf's server sets SO_REUSEPORT, so the kernel spreads the API server's connections over both), with
  KESTREL_WEBHOOK_CERT_SECONDS=60. Resources are applied through the webhook, valid and invalid, across two
  rotations: no call may fail (an invalid one must be denied with the webhook's own message), and caBundle must
  have held two CAs during the rotations.
- cert-manager: the chart with webhook.certManager.enabled renders and passes a server-side dry run against
  cert-manager's own CRDs (e2e/cert_manager.py). cert-manager itself does not run here (its commands' modules are not
  served by the Go proxy); the operator's external mode (serve and reload a Secret written by someone else) is
  tested in tests/operator/test_webhook_certs.py.

Like test_helm.py, the operators run on the host and the API server reaches them by URL on 127.0.0.1.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from e2e import cert_manager, test_helm
from e2e import cluster as cl
from e2e.conftest import wait_until
from e2e.test_helm import (
    BAD_SPEC,
    CHART,
    HostOperator,
    apply_result,
    of_kind,
    release_name,
    render,
    train,
    webhook_config,
    webhook_env,
)
from tests.strict_mode import strict_mode

helm = test_helm.helm  # test_helm's module-scoped fixture: the pinned helm bound to this cluster
DENIED = 'admission webhook "spec.kestrel.dev" denied the request'


def served_certificate(port: int) -> x509.Certificate:
    """The certificate a new TLS connection to 127.0.0.1:port is handed (no verification: only which one)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def ca_bundle(cp: cl.ControlPlane, config: str) -> list[x509.Certificate]:
    pem = cp.get("validatingwebhookconfiguration", config)["webhooks"][0]["clientConfig"].get("caBundle") or ""
    return x509.load_pem_x509_certificates(base64.b64decode(pem)) if pem else []


def secret_pem(cp: cl.ControlPlane, name: str, namespace: str, key: str) -> bytes:
    return base64.b64decode(cp.get("secret", name, namespace)["data"].get(key) or "")


def denied_by_the_webhook(out) -> bool:
    return out.returncode != 0 and DENIED in out.stderr and "spec.experimentSpec:3" in out.stderr


# ------------------------------------------------------------------------------------------ rotation

def test_webhook_keeps_admitting_across_certificate_rotations(cluster: cl.ControlPlane, helm, tmp_path: Path,
                                                              namespace: str, kestrel_crds: list[str]) -> None:
    port = cl.free_port()
    config = f"{namespace}.kestrel.dev"
    vwc = webhook_config(helm, tmp_path, "wh", namespace, namespace, port)
    vwc["metadata"]["name"] = config
    cluster.apply(vwc)
    env = {"KESTREL_WATCH_NAMESPACES": namespace, **webhook_env(namespace, port, config),
           "KESTREL_WEBHOOK_CERT_SECONDS": "60", "KESTREL_LEADER_LEASE": "kestrel-leader", "KESTREL_LEASE_SECONDS": "6"}
    ops: dict[str, HostOperator] = {}
    try:
        for name in ("op-a", "op-b"):
            ops[name] = HostOperator(cluster, f"rotation-{name}-{namespace}", {**env, "KESTREL_POD_NAME": name})
        wait_until("caBundle published", lambda: ca_bundle(cluster, config), timeout=60)
        first = x509.load_pem_x509_certificate(secret_pem(cluster, "kestrel-webhook-tls", namespace, "tls.crt"))
        born = first.not_valid_after_utc - dt.timedelta(seconds=60)
        # Two rotations (at ~40 s and ~80 s of the first certificate's life) and two CA drops (~60 s, ~100 s).
        until = born + dt.timedelta(seconds=110)
        failures: list[str] = []
        bundles: list[tuple[float, int]] = []
        serials: list[tuple[float, int]] = []
        calls = 0
        i = 0
        while dt.datetime.now(dt.timezone.utc) < until:
            age = (dt.datetime.now(dt.timezone.utc) - born).total_seconds()
            bundles.append((age, len(ca_bundle(cluster, config))))
            bad = apply_result(cluster, train(namespace, f"bad-{i}", experimentSpec=BAD_SPEC))
            if not denied_by_the_webhook(bad):
                failures.append(f"{age:.1f}s invalid: exit {bad.returncode}: {bad.stderr.strip()}")
            # Every 5th valid one is created for real (suspended: no pods), the others are server-side dry runs.
            good = apply_result(cluster, train(namespace, f"good-{i}", suspend=True),
                                *(() if i % 5 == 0 else ("--dry-run=server",)))
            if good.returncode != 0:
                failures.append(f"{age:.1f}s valid: exit {good.returncode}: {good.stderr.strip()}")
            calls += 2
            serials.append((age, served_certificate(port).serial_number))
            i += 1
        # Both replicas (SO_REUSEPORT: 30 connections reach both) serve the Secret's certificate within about one
        # check interval (5 s) of it becoming the served one.
        def all_serve_the_secrets() -> bool:
            current = x509.load_pem_x509_certificate(secret_pem(cluster, "kestrel-webhook-tls", namespace, "tls.crt"))
            return {served_certificate(port).serial_number for _ in range(30)} == {current.serial_number}

        wait_until("both replicas serving the Secret's certificate", all_serve_the_secrets, timeout=15)

        changes = [(a, n) for k, (a, n) in enumerate(bundles) if k == 0 or n != bundles[k - 1][1]]
        rotations = [(a, s) for k, (a, s) in enumerate(serials) if k > 0 and s != serials[k - 1][1]]
        print(f"\n[e2e] {calls} calls through the webhook in {bundles[-1][0] - bundles[0][0]:.0f}s, "
              f"{len(failures)} failed; CAs in caBundle by certificate age: {changes}; served certificate changed at "
              f"{[round(a, 1) for a, _ in rotations]} s")
        assert failures == [], "\n".join(failures)
        assert max(n for _, n in bundles) == 2, changes  # old and new CA during a rotation
        assert [n for _, n in changes][:4] == [1, 2, 1, 2], changes  # and the old one dropped again
        assert len({s for _, s in serials}) >= 3, serials  # the first certificate and two rotations
        holder = cluster.get("lease", "kestrel-leader", namespace)["spec"]["holderIdentity"]
        for name, op in ops.items():  # the follower reloads as well as the leader
            assert "loaded while running" in op.log(), (name, holder, op.log()[-3000:])
    finally:
        for op in ops.values():
            op.proc.stop()
        cluster.kubectl("delete", "validatingwebhookconfiguration", config, check=False)


# ------------------------------------------------------------------------------------------ cert-manager

@pytest.fixture(scope="module")
def cert_manager_crds(cluster: cl.ControlPlane) -> list[str]:
    try:
        cert_manager.ensure_built()
    except cert_manager.CertManagerMissing as exc:
        (pytest.fail if strict_mode() else pytest.skip)(str(exc))
    return cl.apply_crds(cluster, cert_manager.crd_paths())


def cm_values(**cm: object) -> dict:
    return {"webhook": {"certManager": {"enabled": True, **cm}}}


@pytest.mark.parametrize("issuer", ["own-ca", "cluster-issuer"])
def test_cert_manager_option_renders_and_applies_with_server_side_dry_run(
        cluster: cl.ControlPlane, helm, tmp_path: Path, namespace: str, cert_manager_crds: list[str],
        issuer: str) -> None:
    release = release_name()
    full = f"{release}-kestrel"
    ref = {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}} if issuer == "cluster-issuer" else {}
    docs = render(helm, tmp_path, release, namespace, cm_values(**ref))
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    assert out.stdout.count("(server dry run)") == len(docs), out.stdout

    certs = {d["metadata"]["name"]: d for d in of_kind(docs, "Certificate")}
    serving = certs[f"{full}-webhook"]["spec"]
    assert serving["secretName"] == f"{full}-webhook-tls"
    assert serving["dnsNames"] == [f"{full}-webhook.{namespace}.svc", f"{full}-webhook.{namespace}.svc.cluster.local"]
    if issuer == "own-ca":
        assert serving["issuerRef"] == {"name": f"{full}-webhook-ca", "kind": "Issuer", "group": "cert-manager.io"}
        assert certs[f"{full}-webhook-ca"]["spec"]["isCA"] is True
        assert {d["metadata"]["name"] for d in of_kind(docs, "Issuer")} == {f"{full}-selfsigned", f"{full}-webhook-ca"}
    else:
        assert serving["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        assert list(certs) == [f"{full}-webhook"] and of_kind(docs, "Issuer") == []
    (vwc,) = of_kind(docs, "ValidatingWebhookConfiguration")
    assert vwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{namespace}/{full}-webhook"
    assert "caBundle" not in vwc["webhooks"][0]["clientConfig"]
    (deployment,) = of_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KESTREL_WEBHOOK_CERTS"] == "external" and env["KESTREL_WEBHOOK_SECRET"] == f"{full}-webhook-tls"
    assert "KESTREL_WEBHOOK_CONFIG" not in env and "KESTREL_WEBHOOK_CERT_SECONDS" not in env

    # Without the option: the operator's own certificates, their lifetime from the chart.
    (plain,) = of_kind(render(helm, tmp_path, release, namespace, {
        "webhook": {"certificateLifetimeSeconds": 7776000}}), "Deployment")
    env = {e["name"]: e.get("value") for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["KESTREL_WEBHOOK_CERTS"], env["KESTREL_WEBHOOK_CERT_SECONDS"]) == ("operator", "7776000")
    bad = helm("template", release, str(CHART), "--set", "webhook.certManager.duration=90d", check=False)
    assert bad.returncode != 0 and "/webhook/certManager/duration" in bad.stderr, bad.stderr
    short = helm("template", release, str(CHART), "--set", "webhook.certificateLifetimeSeconds=30", check=False)
    assert short.returncode != 0 and "/webhook/certificateLifetimeSeconds" in short.stderr, short.stderr
