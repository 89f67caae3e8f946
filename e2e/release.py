"""Kestrel's own images and chart in the e2e registry (registry.py), the way a platform team ships them: pushed by
`scripts/build_images.sh --push` (versioned tags, the chart as an OCI artifact), installed with
`helm install oci://...`, pulled by the real nodes with an imagePullSecret. Used by test_registry.py and by the
object-storage chain (test_real_s3.py), so a run with no PVC also runs from pulled images.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomllib
import yaml

from e2e import cluster as cl
from e2e import node as node_mod
from e2e.registry import Registry

PATH = "kestrel"  # images under HOST/kestrel/, the chart under HOST/kestrel/charts
PULL_SECRET = "regcred"

Helm = Callable[..., subprocess.CompletedProcess]


def version() -> str:
    """pyproject.toml's version: the images' tag and the chart's version and appVersion."""
    return tomllib.loads((cl.REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]


def commit() -> str:
    return subprocess.run(["git", "-C", str(cl.REPO_ROOT), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


@dataclass
class Pushed:
    """What `scripts/build_images.sh --push` put in the registry: {ref: digest} (the chart as oci://...:VERSION),
    the checkout's commit read just before the push (the VERSION-COMMIT tags' suffix), and where it all is."""
    refs: dict[str, str]
    commit: str
    host: str  # HOST/kestrel

    @property
    def trainer(self) -> str:
        return f"{self.host}/kestrel-trainer:{version()}"

    @property
    def operator(self) -> str:
        return f"{self.host}/kestrel-operator:{version()}"

    @property
    def chart(self) -> str:
        return f"oci://{self.host}/charts/kestrel"


def push(cp: cl.ControlPlane, reg: Registry) -> Pushed:
    """scripts/build_images.sh --only trainer,operator --push HOST/kestrel, with the credentials in the environment
    (never on a command line), run from this process: inside the control plane's namespace, where the registry
    listens. The images must be built already (conftest's `_image`, with the machine's network)."""
    script = Path(os.environ.get("KESTREL_BUILD_IMAGES") or node_mod.BUILD_IMAGES)
    at = commit()
    env = {**os.environ, "KESTREL_REGISTRY_USER": reg.user, "KESTREL_REGISTRY_PASSWORD": reg.password,
           "KESTREL_REGISTRY_CA": str(reg.ca), "KESTREL_HELM": str(cp.bin / "helm")}
    out = subprocess.run(["bash", str(script), "--only", "trainer,operator", "--push", f"{reg.host}/{PATH}"],
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise AssertionError(f"build_images.sh --push exited {out.returncode}: {out.stderr[-3000:]}")
    if reg.password in out.stdout + out.stderr:
        raise AssertionError("build_images.sh --push echoed the registry's password")
    refs = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["pushed"]:
            refs[parts[1]] = parts[2]
        elif parts[:1] == ["chart"]:
            refs[f"{parts[1]}:{parts[2]}"] = parts[3]
    return Pushed(refs=refs, commit=at, host=f"{reg.host}/{PATH}")


def helm(cp: cl.ControlPlane, reg: Registry) -> Helm:
    """The real helm with its own home and the registry's credentials in an auth file (--registry-config)."""
    home = cp.workdir / "helm-home-registry"
    env = cp.env(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
                 HELM_DATA_HOME=str(home / "data"))
    auth = reg.auth_file()

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(cp.bin / "helm"), *args, "--registry-config", str(auth)],
                             capture_output=True, text=True, env=env, timeout=600)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {out.returncode}: {out.stderr.strip()}")
        return out

    return run


def pull_secret(cp: cl.ControlPlane, namespace: str, name: str, config_json: str, folder: Path) -> None:
    """A kubernetes.io/dockerconfigjson Secret from a file (credentials never on a command line)."""
    path = folder / f"{name}-{namespace}.json"
    path.touch(mode=0o600)
    path.write_text(config_json)
    try:
        cp.kubectl("create", "secret", "generic", name, "-n", namespace, "--type=kubernetes.io/dockerconfigjson",
                   f"--from-file=.dockerconfigjson={path}")
    finally:
        path.unlink()


def install_chart(cp: cl.ControlPlane, reg: Registry, pushed: Pushed, run_helm: Helm, release: str,
                  namespace: str, watched: str, folder: Path) -> None:
    """helm install oci://HOST/kestrel/charts/kestrel --version VERSION into `namespace`, the operator (and the
    trainer image it gives runs) pulled from the registry with the imagePullSecret PULL_SECRET (which must exist in
    `namespace`), on the real node, reconciling `watched`."""
    values = folder / f"{release}-values.yaml"
    values.write_text(yaml.safe_dump({
        "image": {"repository": f"{pushed.host}/kestrel-operator"},  # tag: the chart's appVersion
        "trainer": {"image": {"repository": f"{pushed.host}/kestrel-trainer"}},  # tag: the chart's appVersion
        "imagePullSecrets": [{"name": PULL_SECRET}],
        "nodeSelector": dict(node_mod.NODE_SELECTOR), "tolerations": list(node_mod.NODE_TOLERATIONS),
        "watchNamespaces": [watched]}))
    run_helm("install", release, pushed.chart, "--version", version(), "--ca-file", str(reg.ca), "-n", namespace,
             "-f", str(values), "--wait", "--timeout", "8m")


def operator_pod(cp: cl.ControlPlane, namespace: str, node: str) -> dict:
    """The chart's running operator pod on `node` (runs' pods are app.kubernetes.io/name=kestrel too)."""
    (pod,) = [p for p in cp.get("pods", namespace=namespace)["items"] if is_operator_pod(p)
              and p["spec"].get("nodeName") == node and p["status"].get("phase") == "Running"]
    return pod


def is_operator_pod(pod: dict) -> bool:
    """The chart's operator Deployment's pods: app.kubernetes.io/name=kestrel, component=operator."""
    labels = pod["metadata"].get("labels") or {}
    return labels.get("app.kubernetes.io/name") == "kestrel" and labels.get("app.kubernetes.io/component") == "operator"


def apply_once_the_webhook_answers(cp: cl.ControlPlane, resource: dict, timeout: float = 90,
                                   dry_run: bool = False) -> None:
    """kubectl apply (or a server-side dry run), retried while the chart's webhook is not reachable yet (kube-proxy
    routes its Service a few seconds after the pod is ready); any other refusal is raised at once."""
    deadline = time.monotonic() + timeout
    args = ["apply", "-f", "-", *(["--dry-run=server"] if dry_run else [])]
    while True:
        out = cp.kubectl(*args, input=yaml.safe_dump(resource), check=False)
        if out.returncode == 0:
            return
        unreachable = "failed calling webhook" in out.stderr
        if not unreachable or time.monotonic() > deadline:
            raise AssertionError(out.stderr.strip())
        time.sleep(2)
