"""Several real nodes: a 2-rank ClassificationTrain whose worker pods the operator's pod template spreads over two real
nodes (each its own network namespace, kubelet, containerd, kube-proxy and pod network, netns.py / node.py); mpirun
reaches the workers over ssh across the node network and Horovod trains across it, and the run ends Succeeded."""

from __future__ import annotations

import ipaddress
import time

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import node as node_mod
from e2e import real_runs
from e2e.conftest import wait_until

ROLE = "training.kubeflow.org/job-role"


@pytest.fixture(scope="module", autouse=True)
def _real_mpi_operator(mpi_controller: str) -> None:
    if mpi_controller != "real":
        pytest.fail("the real-node runs need the real MPI Operator")


def _workers(cluster: cl.ControlPlane, namespace: str, job: str) -> list[dict]:
    return [p for p in cluster.get("pods", namespace=namespace)["items"]
            if p["metadata"]["name"].startswith(f"{job}-worker-") and p["metadata"]["labels"].get(ROLE) == "worker"]


def test_two_ranks_on_two_real_nodes_train_across_the_node_network(
        cluster: cl.ControlPlane, real_workspace: real_runs.Workspace, real_node: node_mod.RealNode,
        second_real_node: node_mod.RealNode) -> None:
    ws = real_workspace
    nodes = {n.name: n for n in (real_node, second_real_node)}
    resource = real_runs.train_resource(ws, "spread")  # gpus 0, numProcesses 2: one rank per worker pod
    ws.make_results_folder("spread")
    start = time.monotonic()
    cluster.apply(resource)
    job = "spread-train-g1"

    def both_running() -> list[dict] | None:
        pods = _workers(cluster, ws.namespace, job)
        running = [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
        return running if len(running) == 2 else None

    workers = wait_until("both worker pods running", both_running, timeout=300, interval=1)
    placed = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in workers}
    # The operator's preferred anti-affinity put the two ranks on the two real nodes (nothing in the resource asks).
    assert sorted(placed.values()) == sorted(nodes), placed
    assert "affinity" not in resource["spec"]
    for pod in workers:  # each on its node's own pod network: traffic between them crosses the node link
        node = nodes[pod["spec"]["nodeName"]]
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node.link.pod_cidr), pod["status"]

    final = ko.wait_phase(cluster, "ClassificationTrain", "spread", ws.namespace, "Succeeded", timeout=900)
    elapsed = time.monotonic() - start
    status = final["status"]
    assert (status["phase"], status["attempt"]) == ("Succeeded", 1), status
    progress = status["progress"]
    assert (progress["epoch"], progress["maxEpoch"]) == (real_runs.EPOCHS, real_runs.EPOCHS), status
    # The launcher (on either node) ran mpirun over ssh into both workers; Horovod saw 2 ranks.
    launchers = [p for p in cluster.get("pods", namespace=ws.namespace)["items"]
                 if p["metadata"]["name"].startswith(f"{job}-launcher")]
    assert launchers and launchers[-1]["status"]["phase"] == "Succeeded"
    assert launchers[-1]["spec"]["nodeName"] in nodes
    log = cluster.kubectl("logs", launchers[-1]["metadata"]["name"], "-n", ws.namespace).stdout
    for rank in (0, 1):  # each rank's own line, forwarded by mpirun from its worker pod
        assert f"rank {rank} of 2 (local rank 0), Horovod over MPI" in log, log[-3000:]
    rows = (ws.run_folder(final) / "training.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(e) for e in range(1, real_runs.EPOCHS + 1)]
    weights = sorted(p.name for p in (ws.run_folder(final) / "weights").glob("*.tlt"))
    assert weights == [f"resnet_{e:03d}.tlt" for e in range(1, real_runs.EPOCHS + 1)], weights
    print(f"\n[e2e] 2 ranks on {sorted(set(placed.values()))}: apply -> Succeeded in {elapsed:.0f} s")


def _node_ready(cluster: cl.ControlPlane, name: str) -> str:
    conds = cluster.get("node", name).get("status", {}).get("conditions", [])
    return next((c["status"] for c in conds if c["type"] == "Ready"), "?")


def test_a_node_lost_mid_run_costs_one_attempt_and_the_run_ends_on_the_node_left(
        cluster: cl.ControlPlane, session_netns, real_workspace: real_runs.Workspace, real_node: node_mod.RealNode,
        second_real_node: node_mod.RealNode) -> None:
    """real-node-1 dies in epoch 2 of 4 (its link cut, then every container, kube-proxy, kubelet, containerd and shim
    SIGKILLed: power lost, not a kubelet restart). The control plane marks it unreachable after its grace period, the
    pods' bounded toleration (the operator's 60 s) runs out, the taint-eviction controller deletes them, the operator
    ends the attempt (NodeLost) and starts attempt 2, which resumes from the run folder's checkpoint on real-node-0
    and ends Succeeded. Prints each step's time after the loss."""
    ws = real_workspace
    epochs = 4
    resource = real_runs.train_resource(ws, "lost", epochs=epochs)
    ws.make_results_folder("lost")
    cluster.apply(resource)
    first = "lost-train-g1"

    def progress_epoch() -> int:
        obj = ko.get_resource(cluster, "ClassificationTrain", "lost", ws.namespace)
        return int((obj.get("status", {}).get("progress") or {}).get("epoch") or 0)

    wait_until("epoch 1 done", lambda: progress_epoch() >= 1, timeout=900, interval=1)
    pods = [p for p in cluster.get("pods", namespace=ws.namespace)["items"] if p["metadata"]["name"].startswith(first)]
    on_lost = sorted(p["metadata"]["name"] for p in pods if p["spec"].get("nodeName") == second_real_node.name)
    assert on_lost, [(p["metadata"]["name"], p["spec"].get("nodeName")) for p in pods]  # the spread put a rank there
    lost_at = time.monotonic()
    killed = node_mod.lose_real_node(second_real_node, session_netns)
    assert killed, "no container ran on the lost node"

    marks: dict[str, float] = {}

    def watch() -> dict | None:
        now = time.monotonic() - lost_at
        if "node NotReady" not in marks and _node_ready(cluster, second_real_node.name) != "True":
            marks["node NotReady"] = now
        if "pod evicted" not in marks and any(
                p["metadata"].get("deletionTimestamp") for p in cluster.get("pods", namespace=ws.namespace)["items"]
                if p["metadata"]["name"] in on_lost):
            marks["pod evicted"] = now
        if "attempt 2 created" not in marks and cluster.exists("mpijob", f"{first}-a2", ws.namespace):
            marks["attempt 2 created"] = now
        running = [p for p in _workers(cluster, ws.namespace, f"{first}-a2") if p["status"].get("phase") == "Running"]
        if "attempt 2 running" not in marks and len(running) == 2:
            marks["attempt 2 running"] = now
        obj = ko.get_resource(cluster, "ClassificationTrain", "lost", ws.namespace)
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    try:
        done = wait_until("lost finished", watch, timeout=1200, interval=1)
    except BaseException as exc:
        obj = ko.get_resource(cluster, "ClassificationTrain", "lost", ws.namespace)
        raise AssertionError(f"{exc}\nmarks {marks}\n{obj.get('status')}\n{real_runs.pod_logs(cluster, ws.namespace)}"
                             ) from None
    marks["Succeeded"] = time.monotonic() - lost_at
    st = done["status"]
    assert (st["phase"], st["attempt"]) == ("Succeeded", 2), st
    failures = next(r for r in st["runs"] if r["runHash"] == st["runHash"])["attemptFailures"]
    assert [(f["attempt"], f["reason"]) for f in failures] == [(1, "NodeLost")], failures
    assert second_real_node.name in failures[0]["message"]
    events = ko.events_for(cluster, ws.namespace, "lost")
    assert any(e["reason"] == "Retrying" and "NodeLost" in e["message"] for e in events), events
    # Attempt 2 ran on the node left only (the lost one is tainted unreachable), resumed from the run's checkpoint.
    second = st["mpiJobName"]
    assert second == f"{first}-a2"
    pods = [p for p in cluster.get("pods", namespace=ws.namespace)["items"] if p["metadata"]["name"].startswith(second)]
    assert pods and {p["spec"]["nodeName"] for p in pods} == {real_node.name}, pods
    launcher = [p["metadata"]["name"] for p in pods if "launcher" in p["metadata"]["name"]]
    log = "".join(cluster.kubectl("logs", name, "-n", ws.namespace).stdout for name in launcher)
    assert "resuming from" in log and f"{st['runPath']}/weights/" in log, log[-3000:]
    rows = (ws.run_folder(done) / "training.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows][-1] == str(epochs), rows
    # The lost node's pods stay Terminating (no kubelet confirms their end) until the node is removed.
    stuck = [p["metadata"]["name"] for p in cluster.get("pods", namespace=ws.namespace)["items"]
             if p["metadata"]["name"] in on_lost]
    print(f"\n[e2e] node lost in epoch 2 (pods {on_lost}, still Terminating: {stuck}); seconds after the loss: "
          + ", ".join(f"{k} {v:.0f}" for k, v in marks.items()))
