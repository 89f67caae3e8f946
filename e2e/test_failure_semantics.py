"""The failure-semantics table of docs/operator.md, one test per row, on the real control plane (real API
server, controller-manager with its garbage collector, scheduler, MPI Operator v0.8.0; kwok plays the kubelet).

Each row ends in a clear status (phase, reason, a message saying what to do), a Warning Event, and no
duplicated run. What kwok cannot do is said in each test: it runs no containers, so a missing key Secret
(CreateContainerConfigError) and node-pressure eviction are written into the pod's status by the test,
exactly as the kubelet would write them; everything reacting to them (MPI Operator, our operator) is real.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e.captures import capture
from e2e.conftest import wait_until

KIND = "ClassificationTrain"
TRAINS = f"classificationtrains.{ko.GROUP}"


def _train(namespace: str, name: str, **spec: object) -> dict:
    """The example, small: 2 GPUs in one worker pod plus the launcher (runs left going hold few GPUs)."""
    res = ko.in_namespace(ko.example("train.yaml", KIND), namespace, name)
    res["spec"].update({"gpus": 2, "numProcesses": 2, **spec})
    res["spec"]["volumes"]["results"]["subPath"] = name
    return res


@pytest.fixture
def cleanup(cluster: cl.ControlPlane) -> Iterator[list[tuple[str, str]]]:
    """(namespace, name) of resources to delete after the test (runs that would otherwise keep going)."""
    made: list[tuple[str, str]] = []
    yield made
    for ns, name in made:
        cluster.kubectl("delete", TRAINS, name, "-n", ns, "--wait=false", check=False)


def _needs_real_mpi_operator(mode: str) -> None:
    if mode != "real":
        pytest.skip("needs the real MPI Operator (the test double does not handle evicted workers)")


def _status(cp: cl.ControlPlane, name: str, namespace: str) -> dict:
    return ko.get_resource(cp, KIND, name, namespace).get("status") or {}


def _wait_reason(cp: cl.ControlPlane, name: str, namespace: str, reason: str, timeout: float = 120) -> dict:
    return wait_until(f"{name} reason {reason}",
                      lambda: (st := _status(cp, name, namespace)).get("reason") == reason and st, timeout)


def _warning(cp: cl.ControlPlane, namespace: str, name: str, reason: str) -> dict:
    return wait_until(f"Warning Event {reason} on {name}", lambda: next(
        (e for e in ko.events_for(cp, namespace, name) if e["type"] == "Warning" and e["reason"] == reason), None),
        timeout=30)


def _pods(cp: cl.ControlPlane, namespace: str, name: str, container: str) -> list[dict]:
    pods = cp.get("pods", namespace=namespace)["items"]
    return [p for p in pods if p["metadata"].get("labels", {}).get(f"kestrel.dev/{KIND.lower()}") == name
            and p["spec"]["containers"][0]["name"] == container]


def _patch_pod_status(cp: cl.ControlPlane, namespace: str, pod: str, status: dict) -> None:
    """Write a pod's status the way the kubelet does (the status subresource)."""
    cp.kubectl("patch", "pod", pod, "-n", namespace, "--subresource=status", "--type=merge",
               "-p", json.dumps({"status": status}))


@pytest.fixture(scope="module")
def running_namespace(cluster: cl.ControlPlane) -> Iterator[str]:
    """kwok keeps launcher pods Running here (kwok-stages.yaml): runs that are still going."""
    ns = cl.LAUNCHER_RUNS_NAMESPACE
    cluster.kubectl("create", "namespace", ns, check=False)
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.usefixtures("operator")
def test_worker_evicted(cluster: cl.ControlPlane, running_namespace: str, cleanup: list, mpi_controller: str) -> None:
    """Row: worker evicted. kwok runs no kubelet eviction manager, so the test writes the Failed/Evicted pod
    status the kubelet writes under node pressure; the MPI Operator v0.8 then fails the MPIJob
    (MPIJobEvicted) and our status names the pod, the kubelet's message and what to change."""
    _needs_real_mpi_operator(mpi_controller)
    ns, name = running_namespace, "evicted"
    cleanup.append((ns, name))
    res = _train(ns, name)
    res["spec"]["retryLimit"] = 0  # the failure itself, as the last attempt shows it (retries: test_real_faults.py)
    ko.prepare(cluster, ns, res)
    cluster.apply(res)
    worker = wait_until("worker Running", lambda: next(
        (p for p in _pods(cluster, ns, name, "worker") if p["status"].get("phase") == "Running"), None), 90)
    said = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 20Mi."
    _patch_pod_status(cluster, ns, worker["metadata"]["name"],
                      {"phase": "Failed", "reason": "Evicted", "message": said})
    failed = ko.wait_phase(cluster, KIND, name, ns, "Failed", timeout=120)["status"]
    assert failed["reason"] == "WorkerEvicted" and said in failed["message"], failed
    assert "spec.resources" in failed["message"]
    _warning(cluster, ns, name, "WorkerEvicted")
    owner = ko.get_resource(cluster, KIND, name, ns)
    assert len(ko.mpijobs_of(cluster, owner)) == 1
    # The other workers MPI Operator v0.8 leaves up (upstream issue 647) are deleted; the launcher stays for its logs.
    wait_until("no worker left running", lambda: not [
        p for p in _pods(cluster, ns, name, "worker")
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")], 60)


def test_mpijob_deleted_by_hand_with_the_operator_down(
    cluster: cl.ControlPlane, running_namespace: str, operator: cl.Operator, cleanup: list
) -> None:
    """Row: MPIJob deleted by hand (and operator restarted meanwhile). The garbage collector removes its
    pods (kwok deletes them like a kubelet would); the restarted operator starts the run again only after
    they are gone, once, with a Warning saying how to stop a run instead."""
    ns, name = running_namespace, "hand-deleted"
    cleanup.append((ns, name))
    res = _train(ns, name)
    ko.prepare(cluster, ns, res)
    cluster.apply(res)
    owner = ko.get_resource(cluster, KIND, name, ns)
    first = wait_until("MPIJob", lambda: ko.mpijobs_of(cluster, owner), 60)[0]
    wait_until("worker Running", lambda: any(p["status"].get("phase") == "Running"
                                             for p in _pods(cluster, ns, name, "worker")), 90)
    operator.kill()
    cluster.kubectl("delete", "mpijob", first["metadata"]["name"], "-n", ns, "--wait=false")
    operator.start()
    again = wait_until("a new MPIJob (new uid)", lambda: next(
        (j for j in ko.mpijobs_of(cluster, owner) if j["metadata"]["uid"] != first["metadata"]["uid"]), None), 120)
    assert again["metadata"]["name"] == first["metadata"]["name"]
    _warning(cluster, ns, name, "MPIJobRecreated")
    time.sleep(6)  # a resync later: still exactly one run
    assert len(ko.mpijobs_of(cluster, owner)) == 1


@pytest.mark.usefixtures("operator")
def test_finished_run_whose_mpijob_is_deleted_keeps_its_result(cluster: cl.ControlPlane, namespace: str) -> None:
    """Row: MPIJob deleted by hand after the run succeeded: the result stands, nothing runs again."""
    res = _train(namespace, "finished")
    ko.prepare(cluster, namespace, res)
    cluster.apply(res)
    ko.wait_phase(cluster, KIND, "finished", namespace, "Succeeded", timeout=180)
    owner = ko.get_resource(cluster, KIND, "finished", namespace)
    cluster.kubectl("delete", "mpijob", "--all", "-n", namespace, "--wait=true")
    time.sleep(8)  # more than one resync (KESTREL_RESYNC_SECONDS=5 in the e2e operator)
    assert ko.mpijobs_of(cluster, owner) == []
    assert _status(cluster, "finished", namespace)["phase"] == "Succeeded"


def test_results_pvc_missing_then_created(cluster: cl.ControlPlane, namespace: str, operator: cl.Operator) -> None:
    """Row: results PVC missing. The real scheduler keeps the pod Unschedulable ('persistentvolumeclaim
    "results" not found'); status says which claim to create; the operator is restarted while it waits;
    creating the claim lets the same run go on to Succeeded."""
    res = _train(namespace, "no-results")
    ko.provide_key_secret(cluster, namespace, res)
    ko.provide_claims(cluster, namespace, ["datasets"])
    cluster.apply(res)
    st = _wait_reason(cluster, "no-results", namespace, "VolumeClaimMissing")
    assert st["phase"] == "Pending" and "PersistentVolumeClaim results does not exist" in st["message"], st
    _warning(cluster, namespace, "no-results", "VolumeClaimMissing")
    operator.kill()
    operator.start()
    ko.provide_claims(cluster, namespace, ["results"])
    ko.wait_phase(cluster, KIND, "no-results", namespace, "Succeeded", timeout=180)
    assert len(ko.mpijobs_of(cluster, ko.get_resource(cluster, KIND, "no-results", namespace))) == 1


@pytest.mark.usefixtures("operator")
def test_key_secret_missing_then_created(cluster: cl.ControlPlane, namespace: str) -> None:
    """Row: key Secret missing (or without the key). kwok cannot run the kubelet's container creation, so
    the test plays the kubelet for these pods (annotation e2e.kestrel.dev/kubelet, which kwok-stages.yaml
    leaves alone) and writes CreateContainerConfigError with the kubelet's message; once the Secret exists it
    writes the started container, as the kubelet's retry would."""
    res = _train(namespace, "no-key", annotations={cl.KUBELET_BY_TEST_ANNOTATION: "test"})
    ko.provide_claims(cluster, namespace, ko.claim_names(res))
    cluster.apply(res)
    pod = wait_until("worker pod scheduled", lambda: next(
        (p for p in _pods(cluster, namespace, "no-key", "worker") if p["spec"].get("nodeName")), None), 90)
    image = pod["spec"]["containers"][0]["image"]
    _patch_pod_status(cluster, namespace, pod["metadata"]["name"], {"phase": "Pending", "containerStatuses": [{
        "name": "worker", "image": image, "imageID": "", "ready": False, "restartCount": 0,
        "state": {"waiting": {"reason": "CreateContainerConfigError",
                              "message": 'secret "kestrel-key" not found'}}}]})
    st = _wait_reason(cluster, "no-key", namespace, "KeySecretMissing")
    capture(ko.get_resource(cluster, KIND, "no-key", namespace), "train-degraded-key-secret-missing")
    assert "Create the Secret named in spec.keySecretRef (kestrel-key)" in st["message"], st
    _warning(cluster, namespace, "no-key", "KeySecretMissing")

    ko.provide_key_secret(cluster, namespace, res)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _patch_pod_status(cluster, namespace, pod["metadata"]["name"], {"phase": "Running", "containerStatuses": [{
        "name": "worker", "image": image, "imageID": "", "ready": True, "restartCount": 0, "started": True,
        "state": {"running": {"startedAt": now}}}]})
    wait_until("KeySecretMissing cleared", lambda: _status(cluster, "no-key", namespace).get("reason")
               not in (None, "KeySecretMissing"), 60)
    assert len(ko.mpijobs_of(cluster, ko.get_resource(cluster, KIND, "no-key", namespace))) == 1


def test_spec_edit_with_the_operator_restarted_starts_one_new_run_after_the_old_pods(
    cluster: cl.ControlPlane, running_namespace: str, operator: cl.Operator, cleanup: list
) -> None:
    """Row: spec edited while a run is going, operator restarted in the middle: the old run is stopped, the new
    one starts only after every old pod is gone (never two runs on one results folder), exactly once."""
    ns, name = running_namespace, "edited"
    cleanup.append((ns, name))
    res = _train(ns, name)
    ko.prepare(cluster, ns, res)
    cluster.apply(res)
    owner = ko.get_resource(cluster, KIND, name, ns)
    first = wait_until("MPIJob", lambda: ko.mpijobs_of(cluster, owner), 60)[0]
    old_pods = {p["metadata"]["uid"] for p in wait_until("worker", lambda: _pods(cluster, ns, name, "worker"), 90)}
    cluster.kubectl("patch", TRAINS, name, "-n", ns, "--type=merge", "-p", '{"spec": {"useAmp": false}}')
    operator.kill()
    operator.start()
    second = wait_until("the new run's MPIJob", lambda: next(
        (j for j in ko.mpijobs_of(cluster, owner) if j["metadata"]["uid"] != first["metadata"]["uid"]), None), 120)
    created = second["metadata"]["creationTimestamp"]
    pods_now = {p["metadata"]["uid"] for p in cluster.get("pods", namespace=ns)["items"]}
    assert not (old_pods & pods_now), "old pods still exist next to the new run"
    assert second["metadata"]["name"].endswith("-g2") and created
    assert len(ko.mpijobs_of(cluster, owner)) == 1
    reasons = [e["reason"] for e in ko.events_for(cluster, ns, name)]
    assert "SpecChanged" in reasons


@pytest.mark.usefixtures("operator")
def test_tolerations_edit_keeps_the_run(cluster: cl.ControlPlane, running_namespace: str, cleanup: list) -> None:
    """Edits of tolerations or activeDeadlineSeconds apply to the running MPIJob; nothing restarts."""
    ns, name = running_namespace, "tolerated"
    cleanup.append((ns, name))
    res = _train(ns, name)
    ko.prepare(cluster, ns, res)
    cluster.apply(res)
    owner = ko.get_resource(cluster, KIND, name, ns)
    first = wait_until("MPIJob", lambda: ko.mpijobs_of(cluster, owner), 60)[0]
    cluster.kubectl("patch", TRAINS, name, "-n", ns, "--type=merge", "-p",
                    '{"spec": {"activeDeadlineSeconds": 7200}}')
    wait_until("deadline on the MPIJob", lambda: ko.mpijobs_of(cluster, owner)[0]["spec"]["runPolicy"].get(
        "activeDeadlineSeconds") == 7200, 60)
    jobs = ko.mpijobs_of(cluster, owner)
    assert [j["metadata"]["uid"] for j in jobs] == [first["metadata"]["uid"]]
    wait_until("observedGeneration 2", lambda: _status(cluster, name, ns).get("observedGeneration") == 2, 30)
