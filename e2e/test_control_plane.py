"""The control plane itself works the way the operator tests assume: versioned binaries, RBAC, a
scheduler that places GPU pods on the kwok nodes, kwok moving them through their phases, and the
controller-manager's Job controller and garbage collector."""

from __future__ import annotations

import json
import os

from e2e import cluster as cl
from e2e.conftest import wait_until
from e2e.netns import NetNS, current_netns_inode

K8S_VERSION = cl.pinned_version("k8s.io/kubernetes")  # the release build.sh stamps into the binaries


def test_versions_are_stamped(cluster: cl.ControlPlane) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == K8S_VERSION
    assert out["serverVersion"]["gitVersion"] == K8S_VERSION
    assert cluster.get_json("/version")["gitVersion"] == K8S_VERSION


def test_every_component_listens_only_inside_the_session_netns(cluster: cl.ControlPlane,
                                                               session_netns: NetNS) -> None:
    """Servers listen on loopback, except the API server, which listens on the session namespace's node
    address (pods of the real node reach it there); that namespace is not the machine's (netns.py)."""
    assert current_netns_inode() != os.fstat(NetNS.host_fd).st_ino
    assert cluster.server == f"https://{session_netns.node_ip}:{cluster.apiserver_port}"
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"):
        addresses = cl.listening_addresses(cluster.processes[name].pid)
        assert addresses, f"{name} listens on nothing?"
        allowed = (f"{session_netns.node_ip}:",) if name == "kube-apiserver" else ("127.0.0.1:",)
        assert all(a.startswith(allowed) for a in addresses), (name, addresses)


def test_unauthenticated_request_is_rejected(cluster: cl.ControlPlane) -> None:
    out = cluster.kubectl("get", "pods", "-A", f"--token=not-{cluster.token}", check=False)
    assert out.returncode != 0
    assert "Unauthorized" in out.stderr or "must be logged in" in out.stderr


def test_fake_gpu_nodes_are_ready_with_gpu_capacity(cluster: cl.ControlPlane) -> None:
    nodes = [n for n in cluster.get("nodes")["items"]
             if cl.KWOK_NODE_ANNOTATION in n["metadata"].get("annotations", {})]  # not the real node
    assert len(nodes) >= 2
    for node in nodes:
        assert node["status"]["allocatable"][cl.GPU_RESOURCE] == "8"
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


def test_gpu_pod_is_scheduled_and_runs(cluster: cl.ControlPlane, namespace: str) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gpu-pod", "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "example.invalid/none:1",
                                 "resources": {"limits": {cl.GPU_RESOURCE: "8"}}}]},
    }
    cluster.apply(pod)
    running = wait_until(
        "pod Running on a fake GPU node",
        lambda: (p := cluster.get("pod", "gpu-pod", namespace))["status"].get("phase") == "Running" and p,
    )
    assert running["spec"]["nodeName"].startswith("gpu-node-")


def test_pod_asking_for_more_gpus_than_a_node_has_stays_pending(cluster: cl.ControlPlane, namespace: str) -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "too-big", "namespace": namespace},
        "spec": {"containers": [{"name": "main", "image": "example.invalid/none:1",
                                 "resources": {"limits": {cl.GPU_RESOURCE: "9"}}}]},
    }
    cluster.apply(pod)
    unschedulable = wait_until(
        "scheduler reports the pod Unschedulable",
        lambda: [c for c in cluster.get("pod", "too-big", namespace)["status"].get("conditions", [])
                 if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"],
    )
    assert "nvidia.com/gpu" in unschedulable[0]["message"]


def test_job_completes_and_its_pods_are_garbage_collected(cluster: cl.ControlPlane, namespace: str) -> None:
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "one-shot", "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "example.invalid/none:1"}]}}},
    }
    cluster.apply(job)
    wait_until(
        "Job Complete (kwok finishes Job pods, the Job controller counts them)",
        lambda: any(c["type"] == "Complete" and c["status"] == "True"
                    for c in cluster.get("job", "one-shot", namespace)["status"].get("conditions", [])),
        timeout=90,
    )
    pods = cluster.get("pods", namespace=namespace)["items"]
    assert pods and all(p["status"]["phase"] == "Succeeded" for p in pods)
    cluster.kubectl("delete", "job", "one-shot", "-n", namespace, "--cascade=background")
    wait_until(
        "Job's pods deleted by the garbage collector",
        lambda: not cluster.get("pods", namespace=namespace)["items"], timeout=90,
    )
