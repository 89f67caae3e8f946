"""The Helm chart with the real helm (built by e2e/build.sh) against the e2e control plane, and the operator's
platform features: admission webhook, leader election, metrics, running under the chart's RBAC.

What is real here: helm, the API server (RBAC, admission webhooks, server-side dry run, schema), the operator
processes (run on the host: the chart's Deployment is installed with replicas 0 because no operator image runs
on the kwok nodes; the host processes get the Deployment's own environment and, in the RBAC test, a token of the
chart's ServiceAccount instead of the admin token). The webhook is reached by URL on 127.0.0.1 (the API server
runs on the host too), not through the chart's Service. Trainer pods are kwok-simulated (e2e/README.md).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e.conftest import _operator_argv, wait_until

pytestmark = pytest.mark.without_session_operator

CHART = cl.REPO_ROOT / "charts" / "kestrel"
HELM_VERSION = cl.pinned_version("helm.sh/helm/v3")
KIND = "ClassificationTrain"
# Line 3 of this spec text misspells a model_config field.
BAD_SPEC = 'model_config {\n  arch: "resnet"\n  n_layerz: 18\n  input_image_size: "1,32,32"\n}\n'
HA_VALUES = {"replicas": 2, "leaderElection": {"leaseDurationSeconds": 10}}


# ------------------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def helm(cluster: cl.ControlPlane) -> Callable[..., subprocess.CompletedProcess[str]]:
    exe = cluster.bin / "helm"
    if not os.access(exe, os.X_OK):
        pytest.fail(f"{exe} missing: `bash e2e/build.sh` builds helm {HELM_VERSION} with the control plane")
    home = cluster.workdir / "helm-home"
    env = cluster.env(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                      HELM_DATA_HOME=str(home / "data"))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=180)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    return run


def values_file(tmp_path: Path, values: dict, name: str = "values.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def render(helm, tmp_path: Path, release: str, namespace: str, values: dict, *extra: str) -> list[dict]:
    out = helm("template", release, str(CHART), "-n", namespace, "-f", values_file(tmp_path, values), *extra)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def release_name() -> str:
    return f"k{uuid.uuid4().hex[:6]}"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310 - loopback
        return resp.read().decode()


def metric_sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:  # noqa: S310
            return resp.status == 200
    except OSError:
        return False


class HostOperator:
    """`kestrel-operator run` on the host with every server on 127.0.0.1; env as the chart's Deployment sets it.
    Its log is logs/host-operator-<label>.log (not kestrel-operator-*: the session operator's log_text reads those)."""

    def __init__(self, cp: cl.ControlPlane, label: str, env: dict[str, str], kubeconfig: Path | None = None) -> None:
        self.health, self.metrics = cl.free_port(), cl.free_port()
        full = cp.env(PYTHONUNBUFFERED="1", **env)
        full.update(KESTREL_METRICS_PORT=str(self.metrics), KESTREL_METRICS_HOST="127.0.0.1")
        if kubeconfig is not None:
            full["KUBECONFIG"] = str(kubeconfig)
        argv = [*_operator_argv(), f"--liveness=http://127.0.0.1:{self.health}/healthz"]
        self.proc = cp.start(f"host-operator-{label}", argv, env=full, cwd=cl.REPO_ROOT)
        cl.wait_for("operator /healthz", lambda: healthy(self.health), timeout=90, proc=self.proc)

    def log(self) -> str:
        return self.proc.log.read_text(errors="replace")


def train(namespace: str, name: str, **spec: object) -> dict:
    """The example ClassificationTrain, CPU-only (kwok runs its launcher pod)."""
    res = ko.in_namespace(ko.example("train.yaml", KIND), namespace, name)
    res["spec"].update({"gpus": 0, "numProcesses": 1, **spec})
    return res


def webhook_config(helm, tmp_path: Path, release: str, namespace: str, watched: str, port: int) -> dict:
    """The chart's ValidatingWebhookConfiguration for `watched`, its Service reference replaced by the host URL."""
    docs = render(helm, tmp_path, release, namespace, {"watchNamespaces": [watched]},
                  "--show-only", "templates/webhook.yaml")
    (vwc,) = docs
    for hook in vwc["webhooks"]:
        path = hook["clientConfig"].pop("service")["path"]
        hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}{path}"
    return vwc


def webhook_env(namespace: str, port: int, config: str, secret: str = "kestrel-webhook-tls") -> dict[str, str]:
    return {"KESTREL_POD_NAMESPACE": namespace, "KESTREL_WEBHOOK_PORT": str(port),
            "KESTREL_WEBHOOK_HOST": "127.0.0.1", "KESTREL_WEBHOOK_HOSTS": "127.0.0.1",
            "KESTREL_WEBHOOK_SECRET": secret, "KESTREL_WEBHOOK_CONFIG": config}


def ca_published(cp: cl.ControlPlane, config: str) -> bool:
    vwc = cp.get("validatingwebhookconfiguration", config)
    return all(h["clientConfig"].get("caBundle") for h in vwc["webhooks"])


def webhook_answers(cp: cl.ControlPlane, doc: dict) -> bool:
    """True once a server-side dry run reaches the webhook (its answer, not a failed call to it)."""
    return "failed calling webhook" not in apply_result(cp, doc, "--dry-run=server").stderr


def apply_result(cp: cl.ControlPlane, doc: dict, *flags: str) -> subprocess.CompletedProcess[str]:
    return cp.kubectl("apply", *flags, "-f", "-", input=yaml.safe_dump(doc), check=False)


@pytest.fixture
def second_namespace(cluster: cl.ControlPlane) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_until(f"default ServiceAccount in {name}", lambda: cluster.exists("serviceaccount", "default", name))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --------------------------------------------------------------------------------------- helm itself

def test_helm_is_the_pinned_build(helm) -> None:
    assert helm("version", "--template", "{{.Version}}").stdout.strip() == HELM_VERSION
    # Chart.yaml asks for Kubernetes >= 1.30: an unstamped helm assumes 1.20 and refuses to render.
    assert helm("template", "r", str(CHART), "--show-only", "templates/deployment.yaml").returncode == 0
    old = helm("template", "r", str(CHART), "--kube-version", "1.29.0", check=False)
    assert old.returncode != 0 and "incompatible with Kubernetes v1.29.0" in old.stderr, old.stderr


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a", "team-b"]}, HA_VALUES,
                                    {"metrics": {"serviceMonitor": {"enabled": True}}}],
                         ids=["default", "namespaced", "ha", "servicemonitor"])
def test_lint_strict(helm, tmp_path: Path, values: dict) -> None:
    out = helm("lint", "--strict", str(CHART), "-f", values_file(tmp_path, values))
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout


def _security(deployment: dict) -> None:
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and container["readinessProbe"]


@pytest.mark.parametrize("mode", ["default", "namespaced", "ha"])
def test_template_applies_with_server_side_dry_run(cluster: cl.ControlPlane, helm, tmp_path: Path, namespace: str,
                                                   second_namespace: str, mode: str) -> None:
    values = {"default": {}, "namespaced": {"watchNamespaces": [second_namespace]}, "ha": HA_VALUES}[mode]
    release = release_name()
    docs = render(helm, tmp_path, release, namespace, values)
    out = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    assert out.stdout.count("(server dry run)") == len(docs), out.stdout

    (deployment,) = of_kind(docs, "Deployment")
    _security(deployment)
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    kestrel_rules = [r for d in of_kind(docs, "ClusterRole") for r in d["rules"] if "kestrel.dev" in r["apiGroups"]]
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in of_kind(docs, "Role")}
    if mode == "namespaced":
        assert kestrel_rules == []  # nothing on Kestrel resources cluster-wide
        assert (second_namespace, f"{release}-kestrel") in roles
        assert env["KESTREL_WATCH_NAMESPACES"] == second_namespace
        (vwc,) = of_kind(docs, "ValidatingWebhookConfiguration")
        assert vwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == [second_namespace]
    else:
        assert kestrel_rules and not any(ns == second_namespace for ns, _ in roles)
    if mode == "ha":
        assert deployment["spec"]["replicas"] == 2 and env["KESTREL_LEADER_LEASE"] == f"{release}-kestrel-leader"


def test_bad_value_fails_at_install_with_the_schema_message(cluster: cl.ControlPlane, helm, namespace: str) -> None:
    release = release_name()
    out = helm("install", release, str(CHART), "-n", namespace, "--set", "replicas=two", check=False)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr, out.stderr
    assert "/replicas" in out.stderr and "want integer" in out.stderr, out.stderr
    out = helm("install", release, str(CHART), "-n", namespace, "--set", "webhook.failurePolicy=Sometimes",
               check=False)
    assert out.returncode != 0 and "/webhook/failurePolicy" in out.stderr, out.stderr
    assert helm("list", "-n", namespace, "-q").stdout.strip() == ""
    assert not cluster.exists("deployment", f"{release}-kestrel", namespace)


# ----------------------------------------------------------------------------------- admission webhook

def test_webhook_refuses_a_malformed_spec_with_its_line(cluster: cl.ControlPlane, helm, tmp_path: Path,
                                                        namespace: str, kestrel_crds: list[str]) -> None:
    port = cl.free_port()
    config = f"{namespace}.kestrel.dev"
    vwc = webhook_config(helm, tmp_path, "wh", namespace, namespace, port)
    vwc["metadata"]["name"] = config
    cluster.apply(vwc)
    op = None
    try:
        op = HostOperator(cluster, f"webhook-{namespace}",
                          {"KESTREL_WATCH_NAMESPACES": namespace, **webhook_env(namespace, port, config)})
        wait_until("caBundle published", lambda: ca_published(cluster, config), timeout=60)
        bad = train(namespace, "bad", experimentSpec=BAD_SPEC)
        for flags in ((), ("--dry-run=server",)):
            out = apply_result(cluster, bad, *flags)
            assert out.returncode != 0
            assert 'admission webhook "spec.kestrel.dev" denied the request' in out.stderr, out.stderr
            assert "spec.experimentSpec:3" in out.stderr and "n_layerz" in out.stderr, out.stderr
        assert not cluster.exists(f"classificationtrains.{ko.GROUP}", "bad", namespace)

        # A GPU mapping CEL cannot check: 8 GPUs on 4 ranks need model_parallelism with 2 entries.
        mp = train(namespace, "mp", gpus=8, numProcesses=4)
        out = apply_result(cluster, mp)
        assert out.returncode != 0 and "model_parallelism needs 2 entries, got 0" in out.stderr, out.stderr

        good = apply_result(cluster, train(namespace, "good"))
        assert good.returncode == 0, good.stderr

        # failurePolicy Fail: with no operator answering, create/update is refused; delete still works.
        op.proc.stop()
        out = apply_result(cluster, train(namespace, "while-down"))
        assert out.returncode != 0 and "failed calling webhook" in out.stderr, out.stderr
        cluster.kubectl("delete", f"classificationtrains.{ko.GROUP}", "good", "-n", namespace)

        # Rotation: without its Secret, the next start generates a new CA and publishes it.
        old_ca = cluster.get("validatingwebhookconfiguration", config)["webhooks"][0]["clientConfig"]["caBundle"]
        cluster.kubectl("delete", "secret", "kestrel-webhook-tls", "-n", namespace)
        op = HostOperator(cluster, f"webhook2-{namespace}",
                          {"KESTREL_WATCH_NAMESPACES": namespace, **webhook_env(namespace, port, config)})
        wait_until("a new caBundle", lambda: cluster.get("validatingwebhookconfiguration", config)[
            "webhooks"][0]["clientConfig"]["caBundle"] != old_ca, timeout=60)
        again = apply_result(cluster, train(namespace, "after-rotation"))
        assert again.returncode == 0, again.stderr
    finally:
        if op is not None:
            op.proc.stop()
        cluster.kubectl("delete", "validatingwebhookconfiguration", config, check=False)


# ----------------------------------------------------------------------------------- high availability

def test_two_replicas_one_mpijob_each_and_takeover(cluster: cl.ControlPlane, namespace: str,
                                                   mpi_controller: str, kestrel_crds: list[str]) -> None:
    env = {"KESTREL_WATCH_NAMESPACES": namespace, "KESTREL_POD_NAMESPACE": namespace,
           "KESTREL_LEADER_LEASE": "kestrel-leader", "KESTREL_LEASE_SECONDS": "6"}
    ops = {name: HostOperator(cluster, f"{name}-{namespace}", {**env, "KESTREL_POD_NAME": name})
           for name in ("op-a", "op-b")}
    try:
        holder = wait_until("a Lease holder", lambda: cluster.get("lease", "kestrel-leader", namespace)["spec"].get(
            "holderIdentity"), timeout=30)
        # No key Secret or volumes: MPIJobs are created all the same (their pods would wait), which is all
        # this test counts.
        cluster.apply([train(namespace, f"ha-{i:02d}") for i in range(20)])

        def one_job_each(expected: int) -> bool:
            jobs = cluster.get("mpijobs.kubeflow.org", namespace=namespace)["items"]
            owners = [r["uid"] for j in jobs for r in j["metadata"].get("ownerReferences", [])]
            assert len(owners) == len(set(owners)), "a resource has two MPIJobs"
            return len(jobs) == expected

        wait_until("20 MPIJobs", lambda: one_job_each(20), timeout=120)
        time.sleep(2)  # a late duplicate would show up now
        assert one_job_each(20)
        follower = next(n for n in ops if n != holder)
        leader_metrics = scrape(ops[holder].metrics)
        assert metric_sum(leader_metrics, "kestrel_mpijobs_created_total") == 20
        assert metric_sum(leader_metrics, "kestrel_apply_to_mpijob_seconds_count") == 20
        latency = metric_sum(leader_metrics, "kestrel_apply_to_mpijob_seconds_sum") / 20
        print(f"\n[e2e] apply -> MPIJob: mean {latency:.1f}s over 20 resources applied at once (1 s resolution)")
        assert metric_sum(scrape(ops[follower].metrics), "kestrel_reconciles_total") == 0
        assert metric_sum(scrape(ops[follower].metrics), "kestrel_is_leader") == 0

        ops[holder].proc.kill()  # SIGKILL: no release, the survivor waits out the lease
        killed_at = time.monotonic()
        cluster.apply([train(namespace, f"ha-late-{i}") for i in range(3)])
        wait_until("the survivor holds the Lease", lambda: cluster.get("lease", "kestrel-leader", namespace)[
            "spec"].get("holderIdentity") == follower, timeout=60)
        wait_until("23 MPIJobs", lambda: one_job_each(23), timeout=60)
        time.sleep(2)
        assert one_job_each(23)
        takeover = time.monotonic() - killed_at
        survivor = scrape(ops[follower].metrics)
        assert metric_sum(survivor, "kestrel_mpijobs_created_total") == 3
        assert metric_sum(survivor, "kestrel_is_leader") == 1
        print(f"\n[e2e] leader killed -> survivor created the late MPIJobs in {takeover:.1f}s (lease 6 s)")
    finally:
        for op in ops.values():
            op.proc.stop()


# ------------------------------------------------------------------- the chart's RBAC, upgrade, uninstall

def sa_kubeconfig(cp: cl.ControlPlane, namespace: str, sa: str) -> Path:
    token = cp.kubectl("create", "token", sa, "-n", namespace, "--duration=2h").stdout.strip()
    path = cp.workdir / f"kubeconfig-{namespace}-{sa}"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "e2e", "cluster": {"server": cp.server, "certificate-authority": str(cp.pki["ca.crt"])}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": sa}}]}))
    path.chmod(0o600)
    return path


def can_i(cp: cl.ControlPlane, kubeconfig: Path, *args: str) -> bool:
    out = subprocess.run([str(cp.bin / "kubectl"), "--kubeconfig", str(kubeconfig), "auth", "can-i", *args],
                         capture_output=True, text=True, env=cp.env(), timeout=30)
    return out.stdout.strip() == "yes"


def deployment_env(cp: cl.ControlPlane, name: str, namespace: str) -> dict[str, str]:
    dep = cp.get("deployment", name, namespace)
    return {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}


def test_operator_under_the_charts_serviceaccount(cluster: cl.ControlPlane, helm, tmp_path: Path, namespace: str,
                                                  second_namespace: str, mpi_controller: str,
                                                  kestrel_crds: list[str]) -> None:
    """helm install (replicas 0) -> the operator on the host with the chart's ServiceAccount token and the
    Deployment's env -> a ClassificationTrain in the watched namespace reaches Succeeded; helm upgrade changes
    a value and keeps everything; helm uninstall leaves the CRDs and the user's resources."""
    release, watched = release_name(), second_namespace
    full = f"{release}-kestrel"
    values = values_file(tmp_path, {"replicas": 0, "watchNamespaces": [watched]})
    helm("install", release, str(CHART), "-n", namespace, "-f", values)
    config = f"{full}.kestrel.dev"
    port = cl.free_port()
    service = cluster.get("validatingwebhookconfiguration", config)["webhooks"][0]["clientConfig"]["service"]
    # The API server reaches the host process by URL (the chart's Service has no pods here).
    cluster.kubectl("patch", "validatingwebhookconfiguration", config, "--type=json", "-p", json.dumps([
        {"op": "remove", "path": "/webhooks/0/clientConfig/service"},
        {"op": "add", "path": "/webhooks/0/clientConfig/url", "value": f"https://127.0.0.1:{port}/kestrel-spec"}]))
    kubeconfig = sa_kubeconfig(cluster, namespace, full)
    assert can_i(cluster, kubeconfig, "create", "mpijobs.kubeflow.org", "-n", watched)
    assert not can_i(cluster, kubeconfig, "create", "mpijobs.kubeflow.org", "-n", namespace)
    assert not can_i(cluster, kubeconfig, "list", "secrets", "-n", watched)
    assert not can_i(cluster, kubeconfig, "get", "secrets", "-n", namespace)  # only its own, by name
    assert can_i(cluster, kubeconfig, "get", f"secrets/{full}-webhook-tls", "-n", namespace)

    env = deployment_env(cluster, full, namespace)
    env.update({"KESTREL_POD_NAMESPACE": namespace, "KESTREL_POD_NAME": "host-op", "KESTREL_WEBHOOK_HOST": "127.0.0.1",
                "KESTREL_WEBHOOK_HOSTS": "127.0.0.1", "KESTREL_WEBHOOK_PORT": str(port)})
    op = HostOperator(cluster, f"sa-{namespace}", env, kubeconfig=kubeconfig)
    try:
        wait_until("caBundle published by the operator's own token", lambda: ca_published(cluster, config), 60)
        bad = apply_result(cluster, train(watched, "bad", experimentSpec=BAD_SPEC))
        assert bad.returncode != 0 and "spec.experimentSpec:3" in bad.stderr, bad.stderr
        res = train(watched, "rbac-run")
        ko.prepare(cluster, watched, res)
        cluster.apply(res)
        done = ko.wait_phase(cluster, KIND, "rbac-run", watched, "Succeeded", timeout=180)
        assert "Forbidden" not in op.log() and " 403" not in op.log(), op.log()[-3000:]

        # Back to the chart's Service reference (keeping the operator's caBundle), as in a real install: Helm's
        # three-way merge would re-add `service` next to our test-only `url`.
        cluster.kubectl("patch", "validatingwebhookconfiguration", config, "--type=json", "-p", json.dumps([
            {"op": "remove", "path": "/webhooks/0/clientConfig/url"},
            {"op": "add", "path": "/webhooks/0/clientConfig/service", "value": service}]))
        helm("upgrade", release, str(CHART), "-n", namespace, "-f", values, "--set", "trainer.gpusPerNode=4")
        assert deployment_env(cluster, full, namespace)["KESTREL_GPUS_PER_NODE"] == "4"
        after = ko.get_resource(cluster, KIND, "rbac-run", watched)
        assert after["metadata"]["uid"] == done["metadata"]["uid"] and after["status"]["phase"] == "Succeeded"
        assert ca_published(cluster, config)  # the three-way merge kept the operator's caBundle
    finally:
        op.proc.stop()
    helm("uninstall", release, "-n", namespace)
    for crd in kestrel_crds:
        assert cluster.exists("crd", crd)
    assert ko.get_resource(cluster, KIND, "rbac-run", watched)["status"]["phase"] == "Succeeded"
    assert not cluster.exists("validatingwebhookconfiguration", config)
    assert not cluster.exists("clusterrole", f"{full}-cluster")
    secret = cluster.get("secret", f"{full}-webhook-tls", namespace)  # the operator's, not Helm's: it stays
    assert base64.b64decode(secret["data"]["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")


# ------------------------------------------------------------------ the operator pod on the real node

def test_helm_install_runs_the_operator_pod_on_the_real_node(cluster: cl.ControlPlane, helm, tmp_path: Path,
                                                             namespace: str, second_namespace: str,
                                                             mpi_controller: str, kestrel_crds: list[str],
                                                             request: pytest.FixtureRequest) -> None:
    """helm install -> the operator pod runs from its image (scripts/build_images.sh) on the real kubelet node
    under its own ServiceAccount, serves the webhook through the chart's Service, reconciles a resource to
    Succeeded (its trainer pods on kwok nodes); helm upgrade rolls it; helm uninstall keeps CRDs and resources.

    Needs the real node and images (e2e/node.py, the `real_node` fixture, conftest's `_image`); a failure to
    start them fails the test."""
    from e2e import node as node_mod
    from e2e.conftest import _image

    real_node = request.getfixturevalue("real_node")
    image = _image("operator")
    real_node.load(image)
    repository, tag = image.ref.rsplit(":", 1)
    release, watched = release_name(), second_namespace
    full = f"{release}-kestrel"
    values = values_file(tmp_path, {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "nodeSelector": dict(node_mod.NODE_SELECTOR), "tolerations": list(node_mod.NODE_TOLERATIONS),
        "watchNamespaces": [watched]})
    helm("install", release, str(CHART), "-n", namespace, "-f", values, "--wait", "--timeout", "5m")
    (pod,) = [p for p in cluster.get("pods", namespace=namespace)["items"]
              if p["metadata"]["labels"].get("app.kubernetes.io/instance") == release]
    assert pod["spec"]["nodeName"] == real_node.name and pod["status"]["phase"] == "Running"
    assert pod["spec"]["serviceAccountName"] == full
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])
    wait_until("caBundle published by the pod", lambda: ca_published(cluster, f"{full}.kestrel.dev"), 60)

    # A Ready pod is not yet a routed Service: kube-proxy programs the new endpoint on its next sync, and until then
    # the API server's call is refused. Wait until the webhook itself answers a dry run (what a GitOps retry sees).
    wait_until("the webhook answering through its Service", lambda: webhook_answers(
        cluster, train(watched, "probe", experimentSpec=BAD_SPEC)), timeout=60)
    bad = apply_result(cluster, train(watched, "bad", experimentSpec=BAD_SPEC))
    assert bad.returncode != 0 and "spec.experimentSpec:3" in bad.stderr, bad.stderr
    res = train(watched, "in-cluster")
    ko.prepare(cluster, watched, res)
    cluster.apply(res)
    done = ko.wait_phase(cluster, KIND, "in-cluster", watched, "Succeeded", timeout=240)

    helm("upgrade", release, str(CHART), "-n", namespace, "-f", values, "--set", "logLevel=DEBUG", "--wait",
         "--timeout", "5m")
    assert deployment_env(cluster, full, namespace)["KESTREL_LOG_LEVEL"] == "DEBUG"
    assert ko.get_resource(cluster, KIND, "in-cluster", watched)["metadata"]["uid"] == done["metadata"]["uid"]
    helm("uninstall", release, "-n", namespace, "--wait")
    assert all(cluster.exists("crd", crd) for crd in kestrel_crds)
    assert ko.get_resource(cluster, KIND, "in-cluster", watched)["status"]["phase"] == "Succeeded"
