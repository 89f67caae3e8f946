"""A failed run's status message is the trainer's own error line, read from the launcher pod's
termination message (terminationMessagePolicy FallbackToLogsOnError), not the MPIJob's generic one."""

from __future__ import annotations

from kestrel_operator.handlers.reconcile import Reconciler
from kestrel_operator.manifests import plan_run
from kestrel_operator.resources import parse_resource
from kestrel_operator.status.trainer_error import trainer_error
from tests.operator.conftest import train_body
from tests.operator.fake_api import FakeApi

# What an mpirun launcher's log ends with when rank 0 refused its input (Open MPI 4.1's banner after it).
MPIRUN_TAIL = """\
Epoch 1/2 starting
kestrel: error: /data/train: no such folder (train_config.train_dataset_path, spec line 11)
--------------------------------------------------------------------------
Primary job  terminated normally, but 1 process returned
a non-zero exit code. Per user-direction, the job has been aborted.
--------------------------------------------------------------------------
mpirun detected that one or more processes exited with non-zero status, thus causing
the job to be terminated. The first process to do so was:

  Process name: [[2491,1],0]
  Exit code:    2
--------------------------------------------------------------------------
"""


def _launcher(job: str, message: str, created: str = "2026-01-01T00:00:00Z", state: str = "state") -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job}-launcher-{created[-3:-1]}", "namespace": "default", "creationTimestamp": created,
                     "labels": {"training.kubeflow.org/job-name": job, "training.kubeflow.org/job-role": "launcher"}},
        "status": {"phase": "Failed", "containerStatuses": [
            {"name": "launcher", state: {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}}]},
    }


def test_picks_the_trainer_line_out_of_mpiruns_banner():
    assert trainer_error([_launcher("j", MPIRUN_TAIL)]) == (
        "kestrel: error: /data/train: no such folder (train_config.train_dataset_path, spec line 11)")


def test_newest_launcher_wins_and_previous_attempts_count():
    old = _launcher("j", "kestrel: error: first", created="2026-01-01T00:00:10Z")
    new = _launcher("j", "classification_tf1 train: error: second", created="2026-01-01T00:00:20Z",
                    state="lastState")
    assert trainer_error([old, new]) == "classification_tf1 train: error: second"


def test_nothing_when_the_log_has_no_trainer_error():
    assert trainer_error([_launcher("j", "Killed\nsegfault in orted")]) is None
    assert trainer_error([]) is None


def test_launcher_keeps_its_log_tail_as_termination_message(settings):
    res = parse_resource(train_body(gpus=0, numProcesses=2), settings)
    job = next(o for o in plan_run(res, res.run.experiment_spec).objects if o["kind"] == "MPIJob")
    for role in ("Launcher", "Worker"):
        container = job["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]["containers"][0]
        assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_failed_run_status_carries_the_trainer_error(settings):
    """The MPI Operator copies the launcher template's labels onto the launcher pod; the operator finds the pod by
    them and quotes the trainer's line from mpirun's tail, not mpirun's banner."""
    api = FakeApi()
    rec = Reconciler(api, settings)
    api.put(train_body())
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    job = api.body("MPIJob", "resnet18-train-g1")
    ours = _launcher("resnet18-train-g1", MPIRUN_TAIL)
    ours["metadata"]["labels"].update(job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["metadata"]["labels"])
    api.put(ours)
    api.put(_launcher("someone-else-g1", "kestrel: error: not ours"))
    api.set_mpijob_conditions("resnet18-train-g1", [
        {"type": "Failed", "status": "True", "reason": "MPIJobFailed", "message": "launcher Job failed"}])
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    st = api.body("ClassificationTrain", "resnet18")["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "TrainerFailed")
    assert "kestrel: error: /data/train: no such folder" in st["message"] and "not ours" not in st["message"]
    assert "mpirun detected" not in st["message"]
    assert api.events[-1][1:3] == ("Warning", "TrainerFailed") and "no such folder" in api.events[-1][3]
