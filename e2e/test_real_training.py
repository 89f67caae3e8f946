"""The user's flow for real: `kubectl apply` a ClassificationTrain with numProcesses 2 (CPU ranks); the real
MPI Operator starts a launcher and two worker pods on the real node, mpirun reaches the workers over ssh,
the trainer trains on a real Fashion-MNIST subset, progress reaches the resource's status from rank 0 (in
a worker pod), the run ends Succeeded, and encrypted checkpoints are on the volume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import node as node_mod
from e2e import real_runs
from e2e.captures import capture
from kestrel_trainer.model_io.files import read_model_bytes

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"  # the HDF5 file signature (HDF5 File Format Specification, section II.A)


@pytest.fixture(scope="module", autouse=True)
def _real_mpi_operator(mpi_controller: str) -> None:
    if mpi_controller != "real":
        pytest.fail("the real-node runs need the real MPI Operator (KESTREL_E2E_MPI=double was set or it "
                    "was not built)")


def test_two_rank_train_succeeds_with_progress_from_the_worker_rank(cluster: cl.ControlPlane, trained: dict,
                                                                    real_workspace: real_runs.Workspace) -> None:
    status = trained["status"]
    assert status["phase"] == "Succeeded", status
    progress = status.get("progress") or {}
    # Only rank 0 reports, and rank 0 ran in worker pod 0: the launcher runs mpirun, no rank.
    assert (progress.get("epoch"), progress.get("maxEpoch")) == (real_runs.EPOCHS, real_runs.EPOCHS), status
    assert progress.get("run") == status["mpiJobName"]
    assert 0.0 <= progress["accuracy"] <= 1.0 and 0.0 <= progress["valAccuracy"] <= 1.0
    jobs = ko.mpijobs_of(cluster, trained)
    assert len(jobs) == 1
    job = jobs[0]["spec"]
    assert (job["slotsPerWorker"], job["mpiReplicaSpecs"]["Worker"]["replicas"]) == (1, 2)
    # Both workers really ran on the real node (their pods stay until the MPIJob is cleaned up).
    # This run's own pods: other tests share the namespace (a failed launcher of theirs is not this run's).
    pods = [p for p in cluster.get("pods", namespace=real_workspace.namespace)["items"]
            if p["metadata"]["labels"].get("training.kubeflow.org/job-name") == status["mpiJobName"]]
    workers = [p for p in pods if p["metadata"]["labels"].get("training.kubeflow.org/job-role") == "worker"]
    launchers = [p for p in pods if p["metadata"]["labels"].get("training.kubeflow.org/job-role") == "launcher"]
    assert launchers and all(p["spec"]["nodeName"] == node_mod.NODE_NAME for p in workers + launchers)
    assert launchers[-1]["status"]["phase"] == "Succeeded"


def test_rank_0_logs_the_run_to_mlflow_from_its_pod(trained: dict, real_workspace: real_runs.Workspace,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer image's mlflow-skinny: rank 0 (in worker pod 0) logged one MLflow run of the run's folder to the
    file store on the volume (real_runs.MLFLOW_ENV); its metric history is training.csv's, status links the run."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = real_workspace.results_of(trained["spec"]["volumes"]["results"]["subPath"]) / "mlruns"
    client = MlflowClient(f"file:{store}")
    runs = client.search_runs(["0"])
    assert [(r.info.status, r.data.tags.get("kestrel.results_dir")) for r in runs] == [
        ("FINISHED", trained["status"]["runPath"])], runs
    assert trained["status"]["progress"].get("trackerRun") == runs[0].info.run_id
    folder = real_workspace.run_folder(trained)
    with (folder / "training.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == real_runs.EPOCHS
    for key in ("loss", "acc", "val_loss", "val_acc", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key))
        assert history == [(int(r["epoch"]), float(r[key])) for r in rows], key


def test_encrypted_checkpoints_are_on_the_volume(trained: dict, real_workspace: real_runs.Workspace) -> None:
    weights = real_workspace.run_folder(trained) / "weights"
    names = sorted(p.name for p in weights.glob("*.tlt"))
    assert names == [f"resnet_{e:03d}.tlt" for e in range(1, real_runs.EPOCHS + 1)], sorted(weights.iterdir())
    last: Path = weights / names[-1]
    raw = last.read_bytes()
    assert not raw.startswith(HDF5_MAGIC)  # encrypted at rest
    assert read_model_bytes(last, real_workspace.key).startswith(HDF5_MAGIC)  # the Secret's key opens it
    assert last.stat().st_uid == real_runs.POD_UID  # written by the non-root trainer


def test_trainer_error_ends_failed_with_its_one_line_message(cluster: cl.ControlPlane,
                                                            real_workspace: real_runs.Workspace) -> None:
    """Missing data: the ranks (in the worker pods) refuse with one line; mpirun fails the launcher, the MPI
    Operator fails the MPIJob, and the resource ends Failed with the trainer's line, not a generic one."""
    empty = real_workspace.results_dir.parent / "empty-data"
    empty.mkdir(exist_ok=True)
    ko.provide_claims(cluster, real_workspace.namespace, ["empty-data"], {"empty-data": empty})
    resource = real_runs.train_resource(real_workspace, "no-data", data_claim="empty-data")
    final = real_runs.run_to_end(cluster, real_workspace, resource, "Failed", timeout=420)
    status = final["status"]
    capture(final, "train-degraded-failed")
    assert f"kestrel: error: dataset folder not found: {real_runs.DATA_MOUNT}/train" in status["message"], status
    events = ko.events_for(cluster, real_workspace.namespace, "no-data")
    assert any(e["type"] == "Warning" and "dataset folder not found" in e["message"] for e in events), events
    # A trainer error is bad input: exactly one attempt, however many retries spec.retryLimit allows.
    assert status["attempt"] == 1 and not any(e["reason"] == "Retrying" for e in events), status
    assert [j["metadata"]["name"] for j in ko.mpijobs_of(cluster, final)] == ["no-data-train-g1"]
