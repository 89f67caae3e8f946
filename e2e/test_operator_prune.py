"""A ClassificationPrune that names a ClassificationTrain waits for that train to succeed, then runs.

The train's pod is left to the test (annotation e2e.kestrel.dev/kubelet, which kwok-stages.yaml leaves alone): the
test writes its status the way the kubelet would, so the train is Running for exactly as long as the test holds
it, however fast or slow the machine. Everything reacting to those writes is real: the Job controller, the MPI
Operator, our operator.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e.captures import capture
from e2e.conftest import wait_until

TRAIN, PRUNE = "ClassificationTrain", "ClassificationPrune"
# How long the test holds the train Running while it checks the prune: more than two of the operator's resyncs
# (KESTREL_RESYNC_SECONDS=5 in the e2e operator fixture), each a full reconcile of the waiting prune.
HOLD_SECONDS = 12.0


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _launcher_pod(cp: cl.ControlPlane, namespace: str, train: str) -> dict | None:
    """The train's launcher pod once the scheduler has placed it (runLauncherAsWorker: the only pod)."""
    for pod in cp.get("pods", namespace=namespace)["items"]:
        labels = pod["metadata"].get("labels", {})
        if labels.get(f"kestrel.dev/{TRAIN.lower()}") == train and pod["spec"].get("nodeName"):
            return pod
    return None


def _write_pod_status(cp: cl.ControlPlane, pod: dict, container_state: dict, phase: str, ready: bool) -> None:
    """The pod's status as the kubelet writes it (status subresource): phase, conditions, the container's state."""
    container = pod["spec"]["containers"][0]
    now, flag = _now(), "True" if ready else "False"
    status = {
        "phase": phase,
        "startTime": pod["status"].get("startTime") or now,
        "conditions": [{"type": t, "status": s, "lastTransitionTime": now}
                       for t, s in (("PodScheduled", "True"), ("Initialized", "True"), ("Ready", flag),
                                    ("ContainersReady", flag))],
        "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                               "ready": ready, "started": ready, "restartCount": 0, "state": container_state}],
    }
    cp.kubectl("patch", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"], "--subresource=status",
               "--type=merge", "-p", json.dumps({"status": status}))


def _prune_waits_with_no_mpijob(cp: cl.ControlPlane, namespace: str, prune: dict) -> dict:
    """The prune's status while its train runs: Pending, waiting for the train (seen Running); no MPIJob at all
    but the train's in the namespace."""
    assert ko.phase(cp, TRAIN, "base", namespace) == "Running", "the train must still be held Running"
    status = ko.get_resource(cp, PRUNE, "base-pruned", namespace).get("status") or {}
    assert (status.get("phase"), status.get("reason")) == ("Pending", "WaitingForModel"), status
    assert "ClassificationTrain base" in status["message"] and "now Running" in status["message"], status
    assert not ko.mpijobs_of(cp, prune), "prune MPIJob created while its train was Running"
    assert len(cp.get("mpijobs", namespace=namespace)["items"]) == 1  # the train's
    return status


@pytest.mark.usefixtures("operator")
def test_prune_from_train_waits_for_the_train_then_runs(cluster: cl.ControlPlane, namespace: str) -> None:
    train = ko.in_namespace(ko.example("train.yaml", TRAIN), namespace, "base")
    # One rank (the launcher runs it), its pod's status written by this test.
    train["spec"].update({"gpus": 1, "numProcesses": 1, "annotations": {cl.KUBELET_BY_TEST_ANNOTATION: "test"}})
    prune = ko.in_namespace(ko.example("prune.yaml", PRUNE), namespace, "base-pruned")
    prune["spec"]["model"] = {"fromTrain": "base"}
    ko.prepare(cluster, namespace, train)
    ko.prepare(cluster, namespace, prune)
    cluster.apply([prune, train])  # prune first: it must not start before its train succeeded
    prune_res = ko.get_resource(cluster, PRUNE, "base-pruned", namespace)

    # Hold the train Running: the launcher's container started, and nothing ends it until the test does.
    pod = wait_until("the train's launcher pod scheduled", lambda: _launcher_pod(cluster, namespace, "base"), 90)
    _write_pod_status(cluster, pod, {"running": {"startedAt": _now()}}, "Running", ready=True)
    ko.wait_phase(cluster, TRAIN, "base", namespace, "Running", timeout=120)
    wait_until("the prune sees its train Running",
               lambda: "now Running" in str(ko.get_resource(cluster, PRUNE, "base-pruned", namespace).get("status")))
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:
        _prune_waits_with_no_mpijob(cluster, namespace, prune_res)
        time.sleep(1.0)
    _prune_waits_with_no_mpijob(cluster, namespace, prune_res)
    capture(ko.get_resource(cluster, PRUNE, "base-pruned", namespace), "prune-progressing-waiting-for-model")

    # Release it: the trainer exits 0, as the kubelet reports it.
    pod = _launcher_pod(cluster, namespace, "base")
    assert pod is not None
    _write_pod_status(cluster, pod, {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": _now(),
                                                    "finishedAt": _now()}}, "Succeeded", ready=False)
    train_done = ko.wait_phase(cluster, TRAIN, "base", namespace, "Succeeded", timeout=180)
    jobs = wait_until("the prune's MPIJob", lambda: ko.mpijobs_of(cluster, prune_res), 60)
    prune_done = ko.wait_phase(cluster, PRUNE, "base-pruned", namespace, "Succeeded", timeout=180)

    assert len(ko.mpijobs_of(cluster, prune_res)) == 1
    # Ordering from the API server's own clock: the prune's MPIJob was created after the train completed.
    train_job = ko.mpijobs_of(cluster, train_done)[0]
    train_finished = _ts(ko.condition(train_job, "Succeeded")["lastTransitionTime"])
    assert _ts(jobs[0]["metadata"]["creationTimestamp"]) >= train_finished.replace(microsecond=0)
    # Single-process job: the launcher does the work, no worker pods.
    assert jobs[0]["spec"].get("runLauncherAsWorker") is True
    assert prune_done["status"].get("phase") == "Succeeded"
    assert prune_done["status"]["inputModelPath"].startswith("/kestrel/model-source/")
