"""Training progress: the trainer-side reporter, run outside the cluster with exactly the identity and
environment the operator gives the trainer pods, patches the resource's status, and `kubectl get`
shows it in the printer columns."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e.conftest import wait_until

REPORT = """
import sys
from kestrel_trainer.report.cluster_status import ClusterStatusReporter
reporter = ClusterStatusReporter.from_env()
assert reporter is not None, "operator variables missing"
ok = reporter.report(epoch=3, max_epoch=30, loss=0.52, accuracy=0.81, val_loss=0.61, val_accuracy=0.875)
sys.exit(0 if ok else 1)
"""


def _pod_identity(job: dict) -> tuple[dict[str, str], str]:
    """The plain env values and ServiceAccount of the MPIJob's rank-0 pod template (launcher)."""
    spec = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    env = {e["name"]: e["value"] for c in spec["containers"] for e in c.get("env", []) if "value" in e}
    return env, spec.get("serviceAccountName", "default")


@pytest.mark.usefixtures("operator")
def test_reporter_patches_progress_shown_by_kubectl_get(cluster: cl.ControlPlane, namespace: str,
                                                        tmp_path) -> None:
    res = ko.in_namespace(ko.example("train.yaml", "ClassificationTrain"), namespace, "progress")
    ko.prepare(cluster, namespace, res)
    cluster.apply(res)
    res = ko.get_resource(cluster, "ClassificationTrain", "progress", namespace)
    job = wait_until("MPIJob", lambda: ko.mpijobs_of(cluster, res))[0]
    env, service_account = _pod_identity(job)
    assert env["KESTREL_RESOURCE_NAME"] == "progress" and env["KESTREL_RESOURCE_NAMESPACE"] == namespace

    # The pod's own credentials: a token for its ServiceAccount, so the operator's RBAC is what is tested.
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, "--duration=10m").stdout.strip()
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig["users"][0]["user"] = {"token": token}
    pod_kubeconfig = tmp_path / "pod-kubeconfig"
    pod_kubeconfig.write_text(yaml.safe_dump(kubeconfig))

    run = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, timeout=60,
                         env=cluster.env(KUBECONFIG=str(pod_kubeconfig), **env))
    assert run.returncode == 0, run.stdout + run.stderr

    progress = ko.get_resource(cluster, "ClassificationTrain", "progress", namespace)["status"]["progress"]
    assert (progress["epoch"], progress["maxEpoch"], progress["valAccuracy"]) == (3, 30, 0.875)
    # The printer columns, as the API server computes them for `kubectl get`.
    rows = cluster.table(f"/apis/kestrel.dev/v1alpha1/namespaces/{namespace}/classificationtrains")
    assert len(rows) == 1
    assert (rows[0]["Epoch"], rows[0]["Max"], rows[0]["Val Acc"]) == (3, 30, 0.875), rows[0]
    printed = cluster.kubectl("get", "classificationtrains", "-n", namespace).stdout
    assert "0.875" in printed and "30" in printed, printed

    # Another resource's status is out of reach for that identity.
    denied = cluster.kubectl("--kubeconfig", str(pod_kubeconfig), "get", "classificationtrains", "-A", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
