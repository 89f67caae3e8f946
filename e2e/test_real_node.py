"""The real node: a kubelet with containerd runs pods for real (no kwok), on a CNI bridge, and those pods
reach the API server through the `kubernetes` Service and resolve names through cluster DNS, which is
what the trainer's pods need (status reporting, the MPI Operator's hostfile names)."""

from __future__ import annotations

import ipaddress
import json

from e2e import cluster as cl
from e2e import node as node_mod
from e2e.conftest import wait_until

K8S_VERSION = cl.pinned_version("k8s.io/kubernetes")  # the release build.sh stamps into the binaries


def _pod(name: str, namespace: str, image: str, command: list[str], **spec: object) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                         "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": dict(node_mod.NODE_SELECTOR),
            "tolerations": list(node_mod.NODE_TOLERATIONS),
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never", "command": command}],
            **spec,
        },
    }


def _finished(cp: cl.ControlPlane, name: str, namespace: str, timeout: float = 120) -> dict:
    def done() -> dict | None:
        pod = cp.get("pod", name, namespace)
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    return wait_until(f"pod {name} finished", done, timeout=timeout, interval=1)


def test_node_registers_ready_with_its_runtime_and_address(cluster: cl.ControlPlane,
                                                           real_node: node_mod.RealNode) -> None:
    node = cluster.get("node", real_node.name)
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == K8S_VERSION
    assert info["containerRuntimeVersion"] == "containerd://2.3.7", info  # the 2.x line Kubernetes 1.36 supports
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_node.ip
    assert not ipaddress.ip_address(real_node.ip).is_loopback
    assert node["metadata"]["labels"][node_mod.NODE_LABEL] == node_mod.NODE_LABEL_VALUE
    # Ours, registered by the kubelet (the node lifecycle controller may briefly add its not-ready one too).
    assert node_mod.NODE_TAINT_KEY in [t["key"] for t in node["spec"].get("taints", [])]
    # The kwok nodes are still there for the scale and GPU tests, and only they are fake.
    fake = [n["metadata"]["name"] for n in cluster.get("nodes")["items"]
            if cl.KWOK_NODE_ANNOTATION in n["metadata"].get("annotations", {})]
    assert fake and real_node.name not in fake


def test_pod_runs_to_completed_and_kubectl_logs_reads_it(cluster: cl.ControlPlane, namespace: str,
                                                         real_node: node_mod.RealNode) -> None:
    cluster.apply(_pod("hello", namespace, real_node.sandbox_image,
                       ["/bin/sh", "-c", "echo answer=$((6 * 7)) uid=$(id -u)"]))
    pod = _finished(cluster, "hello", namespace)
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert pod["spec"]["nodeName"] == real_node.name
    state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node_mod.POD_CIDR)
    # kubectl logs goes API server -> kubelet (client certificates both ways, Webhook authorization).
    logs = cluster.kubectl("logs", "hello", "-n", namespace).stdout
    assert logs.strip() == "answer=42 uid=65535", logs


def test_pod_without_the_toleration_never_lands_on_the_real_node(cluster: cl.ControlPlane, namespace: str,
                                                                 real_node: node_mod.RealNode) -> None:
    pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"plain-{i}", "namespace": namespace},
             "spec": {"containers": [{"name": "main", "image": "example.invalid/none:1"}]}} for i in range(4)]
    cluster.apply(pods)
    for i in range(4):
        placed = wait_until(f"plain-{i} scheduled",
                            lambda i=i: cluster.get("pod", f"plain-{i}", namespace)["spec"].get("nodeName"))
        assert placed != real_node.name and placed.startswith("gpu-node-")


PROBE = r"""
import json, os, socket, ssl, sys, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
token = open(f"{sa}/token").read()
def call(path, body=None):
    req = urllib.request.Request(f"https://{host}:{port}{path}", data=body, method="POST" if body else "GET",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, context=ctx, timeout=10).read())
review = call("/apis/authentication.k8s.io/v1/selfsubjectreviews",
              json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode())
print(json.dumps({
    "service_host": host,
    "version": call("/version")["gitVersion"],
    "user": review["status"]["userInfo"]["username"],
    "kubernetes": socket.gethostbyname("kubernetes.default.svc.cluster.local"),
    "peer": socket.gethostbyname(sys.argv[1]),
}))
"""


def test_pod_reaches_the_api_server_and_resolves_cluster_names(cluster: cl.ControlPlane, namespace: str,
                                                               real_node: node_mod.RealNode) -> None:
    image = real_node.sandbox_image
    # A headless Service + a pod with hostname/subdomain: exactly how the MPI Operator names its workers
    # (hostfile entries <pod>.<job>.<namespace>.svc).
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "peers", "namespace": namespace},
                   "spec": {"clusterIP": "None", "selector": {"app": "peer"}, "publishNotReadyAddresses": True}})
    peer = _pod("peer", namespace, image, ["/bin/sh", "-c", "sleep 300"], hostname="peer-0", subdomain="peers",
                terminationGracePeriodSeconds=1)
    peer["metadata"]["labels"] = {"app": "peer"}
    cluster.apply(peer)
    peer_ip = wait_until("peer pod IP", lambda: cluster.get("pod", "peer", namespace)["status"].get("podIP"),
                         timeout=120, interval=1)
    cluster.apply(_pod("probe", namespace, image,
                       ["python3", "-c", PROBE, f"peer-0.peers.{namespace}.svc"]))
    pod = _finished(cluster, "probe", namespace)
    logs = cluster.kubectl("logs", "probe", "-n", namespace).stdout
    assert pod["status"]["phase"] == "Succeeded", logs
    got = json.loads(logs.strip().splitlines()[-1])
    assert got == {
        "service_host": cl.SERVICE_VIP,  # through kube-proxy's rules, not the API server's own address
        "version": K8S_VERSION,
        "user": f"system:serviceaccount:{namespace}:default",
        "kubernetes": cl.SERVICE_VIP,
        "peer": peer_ip,
    }
