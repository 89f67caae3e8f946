"""Kueue's controller (sigs.k8s.io/kueue, built by e2e/build.sh from gomod/kueue) as a process in the session's
network namespace, set up from Kueue's own manifests in the Go module cache (config/components: CRDs, RBAC,
webhooks), the way its kustomization (config/default) installs them: names prefixed `kueue-`, namespace
`kueue-system`. Differences from a Deployment, each forced by running it as a process here:

- Its identity is a client certificate from the e2e CA for the ServiceAccount user
  `system:serviceaccount:kueue-system:kueue-controller-manager`, so the API server authorizes it with Kueue's own
  ClusterRole (config/components/rbac/role.yaml), not as an admin.
- Webhooks (admission and CRD conversion) are called by URL on 127.0.0.1 with a serving certificate from the e2e CA
  (caBundle), instead of through the `kueue-webhook-service` Service with Kueue's internal certificate rotation:
  the rotator's certificate names only `kueue-webhook-service.kueue-system.svc`, which nothing here resolves.
- With its internal certificates off, Kueue v0.17 reads the metrics server's certificate from the fixed path
  /etc/kueue/metrics/certs (cmd/kueue/main.go) and exits without it, even with metrics off. The process runs in a
  private mount namespace with an overlay on /etc (upper layer on a tmpfs) holding that folder: this machine's
  /etc is not touched.
- Only the webhooks of Kueue's own kinds and of the one integration enabled (`kubeflow.org/mpijob`) are
  installed. For a disabled integration Kueue serves a no-op webhook (jobframework/setup.go), but registering
  them would put every Pod, Job, Deployment and StatefulSet the shared cluster creates through this process.
- Visibility on demand (an aggregated API server) is off; `kubectl get workloads` shows the queue.
"""

from __future__ import annotations

import base64
import copy
import functools
import os
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2e.certs import issue_client_cert, issue_serving_cert
from e2e.components import BUILD_SCRIPT, ControlPlane, apply_crds
from e2e.processes import ControlPlaneError, Process, free_port, wait_for

NAMESPACE = "kueue-system"
SERVICE_ACCOUNT = "kueue-controller-manager"
USER = f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
FRAMEWORK = "kubeflow.org/mpijob"
API = "kueue.x-k8s.io/v1beta2"
# Resources whose webhooks are installed: Kueue's own kinds and the MPIJob integration's.
WEBHOOK_RESOURCES = {"clusterqueues", "cohorts", "localqueues", "resourceflavors", "workloads", "workloads/status",
                     "mpijobs"}
METRICS_CERTS = "/etc/kueue/metrics/certs"  # hard-coded in Kueue v0.17's main.go

# Runs as the process: a private mount namespace (unshare), /etc overlaid so that METRICS_CERTS can exist, then
# exec of Kueue (same PID, so it is stopped by its own PID like every other component).
_MOUNT_AND_EXEC = f"""set -eu
mount -t tmpfs -o size=4m,mode=0700 kueue-etc "$1"
mkdir "$1/upper" "$1/work"
mount -t overlay kueue-etc -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc
mkdir -p {METRICS_CERTS}
cp "$2/tls.crt" "$2/tls.key" {METRICS_CERTS}/
shift 2
exec "$@"
"""


def _build_sh(flag: str) -> Path:
    out = subprocess.run(["bash", str(BUILD_SCRIPT), flag], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


@functools.cache
def binary() -> Path:
    """This checkout's Kueue controller (build.sh names it by a hash of gomod/kueue, so ask it)."""
    return _build_sh("--kueue")


@functools.cache
def config_dir() -> Path:
    """config/components of the Kueue module gomod/kueue pins, in the Go module cache."""
    return _build_sh("--kueue-config")


def version() -> str:
    """The Kueue version gomod/kueue/go.mod requires."""
    for line in (BUILD_SCRIPT.parent / "gomod" / "kueue" / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:2] == ["require", "sigs.k8s.io/kueue"]:
            return parts[2]
    raise ControlPlaneError("gomod/kueue/go.mod does not require sigs.k8s.io/kueue")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomized(obj: dict[str, Any]) -> dict[str, Any]:
    """config/default's namePrefix and namespace, as kustomize applies them to what this suite installs."""
    obj = copy.deepcopy(obj)
    obj["metadata"]["name"] = "kueue-" + obj["metadata"]["name"]
    if "namespace" in obj["metadata"]:
        obj["metadata"]["namespace"] = NAMESPACE
    if obj["kind"] in ("ClusterRoleBinding", "RoleBinding"):
        obj["roleRef"]["name"] = "kueue-" + obj["roleRef"]["name"]
        for subject in obj.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                subject["name"], subject["namespace"] = "kueue-" + subject["name"], NAMESPACE
    return obj


def crds(folder: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's CRDs (crd/kustomization.yaml's list), with the conversion webhooks its patches enable (v1beta1 <->
    v1beta2) pointed at the process."""
    kustomization = yaml.safe_load((folder / "crd" / "kustomization.yaml").read_text())
    converted = set()
    for patch in kustomization.get("patches") or []:
        converted.add(_docs(folder / "crd" / patch["path"])[0]["metadata"]["name"])
    out = []
    for rel in kustomization["resources"]:
        crd = _docs(folder / "crd" / rel)[0]
        if crd["metadata"]["name"] in converted:
            crd["spec"]["conversion"] = {"strategy": "Webhook", "webhook": {
                "clientConfig": {"url": f"{url}/convert", "caBundle": ca_bundle},
                "conversionReviewVersions": ["v1"]}}
        out.append(crd)
    return out


RBAC_FILES = ("role.yaml", "role_binding.yaml", "manager_secrets_role.yaml", "manager_secrets_role_binding.yaml")


def rbac(folder: Path) -> list[dict[str, Any]]:
    """Kueue's manager ClusterRole and its Role on Secrets in kueue-system (its caches list them there), bound to
    the controller's ServiceAccount. Not the leader-election Role: one process, no election."""
    return [_kustomized(d) for name in RBAC_FILES for d in _docs(folder / "rbac" / name)]


def webhooks(folder: Path, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations (webhook/manifests.yaml) for WEBHOOK_RESOURCES, called by URL."""
    out = []
    for conf in _docs(folder / "webhook" / "manifests.yaml"):
        conf = _kustomized(conf)
        kept = []
        for hook in conf["webhooks"]:
            resources = {r for rule in hook.get("rules") or [] for r in rule.get("resources") or []}
            if not resources or not resources <= WEBHOOK_RESOURCES:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca_bundle}
            kept.append(hook)
        conf["webhooks"] = kept
        out.append(conf)
    return out


def configuration(webhook_port: int, health_port: int, cert_dir: Path) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2): the MPIJob integration only, everything on loopback."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "clientConnection": {"qps": 50, "burst": 100},
        "integrations": {"frameworks": [FRAMEWORK]},
        "featureGates": {"VisibilityOnDemand": False},
    }


@dataclass
class Kueue:
    cp: ControlPlane
    proc: Process
    webhook_configurations: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    converted_crds: list[str] = field(default_factory=list)  # CRDs whose conversion webhook is this process

    def log_text(self) -> str:
        return self.proc.log.read_text(errors="replace")

    def stop(self) -> None:
        """Webhook configurations first (failurePolicy Fail: with the process gone they would refuse every MPIJob
        and Kueue object), then the process. The CRDs stay, without their conversion webhook (v1beta2 only)."""
        for kind, name in self.webhook_configurations:
            self.cp.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        for name in self.converted_crds:
            self.cp.kubectl("patch", "crd", name, "--type=merge", "-p",
                            '{"spec": {"conversion": {"strategy": "None", "webhook": null}}}', check=False)
        self.proc.stop()


def _kubeconfig(cp: ControlPlane, path: Path, cert: Path, key: Path) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": cp.server, "certificate-authority": str(cp.pki["ca.crt"])}}],
        "users": [{"name": USER, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": USER}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:  # noqa: S310 - loopback
        return resp.status == 200


def start(cp: ControlPlane) -> Kueue:
    """Kueue's CRDs, RBAC and webhooks from its module, and its controller as a process; returns once its webhooks
    answer (readyz includes the webhook server) and are registered. Needs the MPIJob CRD (the integration's
    controller starts only when the API serves MPIJobs)."""
    exe, folder = binary(), config_dir()
    if not os.access(exe, os.X_OK):
        raise ControlPlaneError(f"no Kueue binary at {exe}: run `bash e2e/build.sh` (it builds e2e/gomod/kueue)")
    home = cp.workdir / "kueue"
    certs = home / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    (home / "etc").mkdir(exist_ok=True)
    crt, key = issue_serving_cert(cp.pki, "kueue-webhook", ["127.0.0.1"])
    (certs / "tls.crt").write_bytes(crt.read_bytes())
    (certs / "tls.key").write_bytes(key.read_bytes())
    (certs / "tls.key").chmod(0o600)
    ca_bundle = base64.b64encode(cp.pki["ca.crt"].read_bytes()).decode()
    webhook_port, health_port = free_port(), free_port()
    url = f"https://127.0.0.1:{webhook_port}"

    cp.kubectl("create", "namespace", NAMESPACE, check=False)
    with_conversion = crds(folder, url, ca_bundle)
    paths = []
    for crd in with_conversion:
        path = home / f"{crd['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(crd))
        paths.append(path)
    apply_crds(cp, paths)
    cp.apply(rbac(folder))

    client_crt, client_key = issue_client_cert(cp.pki, "kueue-controller", USER,
                                               ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"])
    kubeconfig = _kubeconfig(cp, home / "kubeconfig", client_crt, client_key)
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(configuration(webhook_port, health_port, certs)))
    proc = cp.start("kueue", [
        "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _MOUNT_AND_EXEC, "kueue",
        home / "etc", certs, exe, f"--config={config}", "--zap-log-level=2",
    ], env=cp.env(KUBECONFIG=str(kubeconfig)))
    wait_for("Kueue readyz (webhook server up)", lambda: _ready(health_port), timeout=120, interval=0.5, proc=proc)
    kueue = Kueue(cp=cp, proc=proc, converted_crds=[c["metadata"]["name"] for c in with_conversion
                                                    if c["spec"].get("conversion")])
    confs = webhooks(folder, url, ca_bundle)
    cp.apply(confs)
    kueue.webhook_configurations = [(c["kind"], c["metadata"]["name"]) for c in confs]
    return kueue
