"""Attempts of one run (spec.retryLimit): an attempt that ends for a reason other than the trainer's own error is
deleted with all its pods and the next one starts in the same folder (resuming from its newest checkpoint); a
trainer error or an exhausted budget ends the run Failed, and a failed MPIJob's leftover workers are removed."""

from __future__ import annotations

from kestrel_operator.status import reasons as r
from tests.operator.conftest import train_body
from tests.operator.test_handlers import put_run_pod

TRAIN = "ClassificationTrain"
JOB = "resnet18-train-g1"
LOST = ("----------------------------------------------------------------------\n"
        "ORTE has lost communication with a remote daemon.\n  HNP daemon   : [[1,0],0] on node gitops-launcher\n")


def status(api):
    return api.body(TRAIN, "resnet18")["status"]


def args(api, job):
    c = api.body("MPIJob", job)["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    return [c["command"][0], *c.get("args", [])]


def fail_launcher(api, job, code=1, message=LOST):
    put_run_pod(api, job, "launcher-x1", container="launcher", phase="Failed", containerStatuses=[{
        "name": "launcher", "state": {"terminated": {"exitCode": code, "reason": "Error", "message": message}}}])
    api.set_mpijob_conditions(job, [{"type": "Failed", "status": "True", "reason": "MPIJobFailed",
                                     "message": f"MPIJob default/{job} has failed"}])


def start(api, rec, **spec):
    api.put(train_body(**spec))
    rec.reconcile(api.body(TRAIN, "resnet18"))


def test_a_lost_rank_is_retried_in_the_same_folder_once_the_failed_attempts_pods_are_gone(api, rec):
    start(api, rec, retryLimit=1, gpus=2, numProcesses=2)
    folder = args(api, JOB)[args(api, JOB).index("-r") + 1]
    fail_launcher(api, JOB)
    put_run_pod(api, JOB, "worker-0")  # still Running: the garbage collector takes it once the MPIJob is gone
    rec.reconcile(api.body(TRAIN, "resnet18"))
    st = status(api)
    assert (st["phase"], st["reason"], st["attempt"]) == ("Pending", r.RETRYING, 2)
    assert "MPIJob/" + JOB in api.deletes
    failure = st["runs"][0]["attemptFailures"]
    assert [(f["attempt"], f["reason"]) for f in failure] == [(1, r.RANK_LOST)]
    assert "ORTE has lost communication" in failure[0]["message"]
    warning = [e for e in api.events if e[2] == r.RETRYING]
    assert warning and "attempt 1 of 2" in warning[0][3] and "RankLost" in warning[0][3]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Reconciling"] == "True"

    # The next pass waits for the failed attempt's pods, then starts attempt 2 in the same folder.
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert not any(n.endswith("-a2") for n in api.creates)
    for pod in api.of_kind("Pod"):
        api.delete("v1", "Pod", "default", pod["metadata"]["name"])
    rec.reconcile(api.body(TRAIN, "resnet18"))
    second = f"{JOB}-a2"
    assert f"MPIJob/{second}" in api.creates
    assert api.body("MPIJob", second)["metadata"]["labels"]["kestrel.dev/attempt"] == "2"
    assert args(api, second)[args(api, second).index("-r") + 1] == folder  # resumes there
    st = status(api)
    assert (st["mpiJobName"], st["attempt"], st["runHash"]) == (second, 2, folder.rsplit("/", 1)[1])

    # Attempt 2 fails the same way: the budget (retryLimit 1) is spent, the run ends Failed and says so.
    fail_launcher(api, second)
    rec.reconcile(api.body(TRAIN, "resnet18"))
    st = status(api)
    assert (st["phase"], st["reason"]) == ("Failed", r.RANK_LOST)
    assert st["message"].endswith("no retry left: attempt 2 of 2 (spec.retryLimit)")
    assert {c["type"]: c["status"] for c in st["conditions"]}["Stalled"] == "True"
    n = len(api.status_patches)
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert len(api.status_patches) == n  # settled: the message does not grow


def test_a_graceful_stop_is_retried_and_a_trainer_error_is_not(api, rec):
    start(api, rec)
    fail_launcher(api, JOB, code=143, message="kestrel: error: stopped by signal 15: checkpoint written to "
                                              "/results/runs/x/weights/resnet_002_step000031.tlt\n")
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert (status(api)["reason"], status(api)["runs"][0]["attemptFailures"][0]["reason"]) == (
        r.RETRYING, r.RUN_STOPPED)
    rec.reconcile(api.body(TRAIN, "resnet18"))
    for pod in api.of_kind("Pod"):
        api.delete("v1", "Pod", "default", pod["metadata"]["name"])
    rec.reconcile(api.body(TRAIN, "resnet18"))
    second = f"{JOB}-a2"
    fail_launcher(api, second, code=2, message="kestrel: error: dataset folder not found: /data/train\n")
    rec.reconcile(api.body(TRAIN, "resnet18"))
    st = status(api)
    assert (st["phase"], st["reason"], st["attempt"]) == ("Failed", r.TRAINER_FAILED, 2)
    assert f"MPIJob/{second}" not in api.deletes and "no retry left" not in st["message"]


def test_a_graceful_stop_is_retried_when_mpirun_exits_with_another_code(api, rec):
    """The ranks stopped and checkpointed (143), but mpirun lost the stopped worker pod's daemon first and exited 1
    with its own banner after the trainer's stop line: still a stop, retried, not a trainer error."""
    start(api, rec)
    fail_launcher(api, JOB, code=1, message=(
        "kestrel train: error: stopped by signal 15 on rank 1: checkpoint written to "
        "/results/runs/x/weights/resnet_002_step000007.tlt; run the same command again to resume from it\n"
        "--------------------------------------------------------------------------\n"
        "ORTE has lost communication with a remote daemon.\n"
        "--------------------------------------------------------------------------\n"))
    rec.reconcile(api.body(TRAIN, "resnet18"))
    failure = status(api)["runs"][0]["attemptFailures"][0]
    assert (status(api)["reason"], failure["reason"]) == (r.RETRYING, r.RUN_STOPPED), failure
    assert "stopped by signal 15 on rank 1" in failure["message"]


def test_an_evicted_worker_is_retried_and_leftover_workers_of_a_failed_run_are_removed(api, rec):
    start(api, rec, retryLimit=0, gpus=16, numProcesses=16)
    put_run_pod(api, JOB, "worker-0", phase="Failed", reason="Evicted", message="The node was low on memory.")
    put_run_pod(api, JOB, "worker-1")  # Running, holding its GPUs: what MPI Operator v0.8 leaves behind
    api.set_mpijob_conditions(JOB, [{"type": "Failed", "status": "True", "reason": "MPIJobEvicted",
                                     "message": "1/2 workers are evicted"}])
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert (status(api)["phase"], status(api)["reason"]) == ("Failed", r.WORKER_EVICTED)
    # The evicted pod and the MPIJob (its launcher's logs) stay; the running worker and the drain guard go.
    assert sorted(api.deletes) == [f"Pod/{JOB}-worker-1", f"PodDisruptionBudget/{JOB}"]
    assert [e[2] for e in api.events if e[2] == r.WORKERS_REMOVED] == [r.WORKERS_REMOVED]


def test_a_deadline_is_not_retried(api, rec):
    start(api, rec, activeDeadlineSeconds=60)
    api.set_mpijob_conditions(JOB, [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                     "message": "Job was active longer than specified deadline"}])
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert (status(api)["phase"], status(api)["reason"]) == ("Failed", "DeadlineExceeded")
    assert api.of_kind("MPIJob") and "MPIJob/" + JOB not in api.deletes


def lose_pod_with_its_node(api, job, suffix, node="node-2"):
    """What Kubernetes does to a pod whose node stopped answering, once its toleration ran out: the taint-eviction
    controller marks it (DisruptionTarget) and deletes it; with no kubelet to confirm, it stays Terminating, Running."""
    pod = put_run_pod(api, job, suffix, phase="Running", conditions=[
        {"type": "Ready", "status": "False"},
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
         "message": "Taint manager: deleting due to NoExecute taint"}])
    stored = api.objects[("Pod", "default", pod["metadata"]["name"])]
    stored["metadata"]["deletionTimestamp"] = "2026-12-07T14:00:00Z"
    stored["spec"]["nodeName"] = node
    return stored


def test_a_rank_lost_with_its_node_ends_the_still_running_attempt_and_the_next_one_does_not_wait_for_it(api, rec):
    """The MPI Operator keeps such an MPIJob Running (the rank left waits for the lost one forever; a worker being
    deleted is not a failure to it): the operator ends the attempt itself (NodeLost), and starts the next one once the
    other pods are gone, without waiting for the lost node's pod, whose object only its node can remove."""
    start(api, rec, retryLimit=1, gpus=0, numProcesses=2)
    api.set_mpijob_conditions(JOB, [{"type": "Running", "status": "True", "reason": "MPIJobRunning",
                                     "message": "running"}])
    put_run_pod(api, JOB, "launcher-x1", container="launcher")
    put_run_pod(api, JOB, "worker-0")
    lose_pod_with_its_node(api, JOB, "worker-1")
    rec.reconcile(api.body(TRAIN, "resnet18"))
    st = status(api)
    assert (st["phase"], st["reason"], st["attempt"]) == ("Pending", r.RETRYING, 2)
    assert "MPIJob/" + JOB in api.deletes
    failure = st["runs"][0]["attemptFailures"]
    assert [(f["attempt"], f["reason"]) for f in failure] == [(1, r.NODE_LOST)]
    assert f"pod {JOB}-worker-1 was evicted from node node-2" in failure[0]["message"]
    # The ranks left on live nodes wait for the lost one and can save nothing: their pods are deleted at once
    # (grace 1 s) rather than after the pods' grace period; the lost one is left to its eviction (Terminating).
    assert sorted(api.graceful_deletes) == [(f"Pod/{JOB}-launcher-x1", 1), (f"Pod/{JOB}-worker-0", 1)]
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert f"MPIJob/{JOB}-a2" in api.creates
    assert status(api)["mpiJobName"] == f"{JOB}-a2"
    # Attempt 2 runs on the node left while attempt 1's lost pod is still Terminating: that pod is not attempt 2's.
    second = f"{JOB}-a2"
    api.set_mpijob_conditions(second, [{"type": "Running", "status": "True", "reason": "MPIJobRunning",
                                        "message": "running"}])
    put_run_pod(api, second, "launcher-y2", container="launcher")
    put_run_pod(api, second, "worker-0")
    put_run_pod(api, second, "worker-1")
    rec.reconcile(api.body(TRAIN, "resnet18"))
    st = status(api)
    assert (st["phase"], st["attempt"], st["mpiJobName"]) == ("Running", 2, second), st
    assert f"MPIJob/{second}" not in api.deletes


def test_a_failed_mpijob_with_a_pod_lost_with_its_node_says_node_lost(api, rec):
    """The launcher's Job fails when its pod is evicted from a lost node: the cause is the node, not the trainer."""
    start(api, rec, retryLimit=0, gpus=0, numProcesses=2)
    lose_pod_with_its_node(api, JOB, "launcher-x1")
    api.set_mpijob_conditions(JOB, [{"type": "Failed", "status": "True", "reason": "MPIJobFailed",
                                     "message": f"MPIJob default/{JOB} has failed"}])
    rec.reconcile(api.body(TRAIN, "resnet18"))
    st = status(api)
    assert (st["phase"], st["reason"]) == ("Failed", r.NODE_LOST), st
    assert st["message"].endswith("no retry left: attempt 1 of 1 (spec.retryLimit)")
