"""Stalls that explain themselves: the pods' own story (scheduler, kubelet, attach/detach controller) in
status.reason/message with a Warning Event, and what the user should do. The pod and Event fixtures
carry the messages those components write (kube-scheduler's FitError text, the kubelet's waiting
reasons, the attach/detach controller's Multi-Attach event), not our own wording."""

from __future__ import annotations

import pytest

from kestrel_operator.status import reasons as r
from kestrel_operator.status.pods import pod_cause, stuck_creating, trainer_failure
from tests.operator.conftest import train_body
from tests.operator.test_handlers import cond, put_run_pod

JOB = "resnet18-train-g1"
IMAGE = "kestrel-trainer:test"


def unschedulable(message):
    return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": message}]}


def waiting(reason, message, name="launcher", **extra):
    return {"phase": "Pending", "containerStatuses": [{"name": name, "image": IMAGE, "ready": False,
                                                       "restartCount": 0, **extra,
                                                       "state": {"waiting": {"reason": reason, "message": message}}}]}


CASES = {
    "insufficient-gpu": (unschedulable("0/4 nodes are available: 4 Insufficient nvidia.com/gpu. preemption: 0/4 "
                                       "nodes are available: 4 No preemption victims found for incoming pod."),
                         r.UNSCHEDULABLE, ["Insufficient nvidia.com/gpu", "spec.gpus"]),
    "pvc-missing": (unschedulable('0/4 nodes are available: persistentvolumeclaim "results" not found. '
                                  "preemption: 0/4 nodes are available: 4 Preemption is not helpful."),
                    r.VOLUME_CLAIM_MISSING, ["PersistentVolumeClaim results does not exist", "Create it"]),
    "image-pull": (waiting("ImagePullBackOff", f'Back-off pulling image "{IMAGE}"'),
                   r.IMAGE_PULL_BACKOFF, ["cannot pull image", "spec.imagePullSecrets"]),
    "key-secret-missing": (waiting("CreateContainerConfigError", 'secret "kestrel-key" not found'),
                           r.KEY_SECRET_MISSING, ["kestrel-key", "Create the Secret named in spec.keySecretRef"]),
    "key-missing-in-secret": (waiting("CreateContainerConfigError",
                                      "couldn't find key key in Secret default/kestrel-key"),
                              r.KEY_SECRET_MISSING, ["couldn't find key key", "spec.keySecretRef.key"]),
    "worker-crash-loop": (waiting("CrashLoopBackOff", "back-off 40s restarting failed container=worker", "worker",
                                  restartCount=4, lastState={"terminated": {"exitCode": 255, "reason": "Error"}}),
                          r.WORKER_CRASH_LOOP, ["4 restarts", "exit code 255", "sshd"]),
}


def created_run(api, rec, **spec):
    api.put(train_body(**spec))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    api.set_mpijob_conditions(JOB, cond([("Created", "True")]))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert api.body("ClassificationTrain", "resnet18")["status"]["reason"] == "MPIJobCreated"


@pytest.mark.parametrize("case", sorted(CASES))
def test_stalled_pod_explains_the_run(api, rec, case):
    pod_status, reason, needles = CASES[case]
    created_run(api, rec)
    container = pod_status.get("containerStatuses", [{}])[0].get("name", "launcher")
    put_run_pod(api, JOB, "launcher-abcde", container=container, **pod_status)
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    st = api.body("ClassificationTrain", "resnet18")["status"]
    assert (st["phase"], st["reason"]) == ("Pending", reason)
    assert f"{JOB}-launcher-abcde" in st["message"] and all(n in st["message"] for n in needles), st["message"]
    assert api.events[-1][1:3] == ("Warning", reason)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reason)

    # Fixed (the kubelet starts the container): the MPIJob's story again, with an Event for the change.
    api.delete("v1", "Pod", "default", f"{JOB}-launcher-abcde")
    api.set_mpijob_conditions(JOB, cond([("Created", "True"), ("Running", "True")]))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert api.body("ClassificationTrain", "resnet18")["status"]["reason"] == "MPIJobRunning"
    assert api.events[-1][1:3] == ("Normal", "MPIJobRunning")


def test_multi_attach_comes_from_the_pods_events(api, rec):
    created_run(api, rec)
    put_run_pod(api, JOB, "worker-1", phase="Pending",
                containerStatuses=[{"name": "worker", "state": {"waiting": {"reason": "ContainerCreating"}}}])
    api.put({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "w1.1"}, "type": "Warning",
             "reason": "FailedAttachVolume", "lastTimestamp": "2026-01-01T00:00:00Z",
             "involvedObject": {"kind": "Pod", "name": f"{JOB}-worker-1", "namespace": "default"},
             "message": 'Multi-Attach error for volume "pvc-4f1c" Volume is already exclusively attached to one '
                        "node and can't be attached to another"})
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    st = api.body("ClassificationTrain", "resnet18")["status"]
    assert st["reason"] == r.VOLUME_MULTI_ATTACH and "ReadWriteMany" in st["message"]
    assert api.events[-1][1:3] == ("Warning", r.VOLUME_MULTI_ATTACH) and out.requeue_after is None


def test_pod_stuck_creating_without_events_is_looked_at_again(api, rec):
    created_run(api, rec)
    put_run_pod(api, JOB, "worker-1", phase="Pending")
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert out.requeue_after and api.body("ClassificationTrain", "resnet18")["status"]["reason"] == "MPIJobCreated"


def test_failed_launcher_quotes_the_trainers_last_line(api, rec):
    created_run(api, rec)
    # The trainer's one-line error (contract.error_line): bad input, never retried.
    line = "kestrel: error: /etc/kestrel/spec/spec.txt:3: model_config.n_layers: 19 is not one of 10, 18"
    put_run_pod(api, JOB, "launcher-abcde", container="launcher", phase="Failed", containerStatuses=[{
        "name": "launcher", "state": {"terminated": {"exitCode": 2, "reason": "Error",
                                                     "message": f"Epoch 1/12\n{line}\n"}}}])
    api.set_mpijob_conditions(JOB, cond([("Created", "True"), ("Failed", "True")]))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    st = api.body("ClassificationTrain", "resnet18")["status"]
    assert (st["phase"], st["reason"]) == ("Failed", r.TRAINER_FAILED)
    assert line in st["message"] and "code 2" in st["message"] and "Epoch 1/12" not in st["message"]
    assert api.of_kind("MPIJob") and st["attempt"] == 1  # one attempt: running it again cannot help
    assert api.of_kind("PodDisruptionBudget") == []  # the attempt ended: a drain need not wait for it
    assert api.events[-1][1:3] == ("Warning", r.TRAINER_FAILED)
    # The launcher pod goes later (cleanup): the explanation stays, and no second Event.
    api.delete("v1", "Pod", "default", f"{JOB}-launcher-abcde")
    n = len(api.events)
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert api.body("ClassificationTrain", "resnet18")["status"]["reason"] == r.TRAINER_FAILED and len(api.events) == n


def test_launcher_keeps_its_last_log_line_as_termination_message(api, rec):
    created_run(api, rec)
    launcher = api.body("MPIJob", JOB)["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert launcher["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_pure_helpers_ignore_terminating_pods_and_succeeded_launchers():
    gone = {"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": waiting("ImagePullBackOff", "x")}
    assert pod_cause([gone], [], "k", IMAGE) is None
    ok = {"metadata": {"name": "l"}, "status": {"containerStatuses": [
        {"name": "launcher", "state": {"terminated": {"exitCode": 0}}}]}}
    assert trainer_failure([ok]) is None
    assert stuck_creating([{"metadata": {"name": "s"}, "spec": {}, "status": {"phase": "Pending"}}]) == []


def test_evicted_worker_explains_the_failed_run(api, rec):
    created_run(api, rec, retryLimit=0)
    put_run_pod(api, JOB, "worker-0", phase="Failed", reason="Evicted",
                message="The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi.")
    # What the MPI Operator v0.8 does with an evicted worker (updateMPIJobStatus): the MPIJob fails.
    api.set_mpijob_conditions(JOB, [{"type": "Failed", "status": "True", "reason": "MPIJobEvicted",
                                     "message": "1/1 workers are evicted"}])
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    st = api.body("ClassificationTrain", "resnet18")["status"]
    assert (st["phase"], st["reason"]) == ("Failed", r.WORKER_EVICTED)
    assert "low on resource: memory" in st["message"] and "spec.resources" in st["message"]
