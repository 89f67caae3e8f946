"""Faults during a real run on the real node, and the operator's attempts (spec.retryLimit): a worker pod deleted in
the middle of epoch 2 of 4 costs one attempt: its SIGTERM reaches rank 1 through the pod's entrypoint (kestrel-worker),
both ranks stop after the same step of epoch 2 and rank 0 (in the other worker pod) writes a mid-epoch checkpoint;
the next attempt resumes from it and the run ends Succeeded with no pod of the failed attempt left and the accuracy
of an uninterrupted run; a trainer error is one attempt only."""

from __future__ import annotations

import re
import time

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import real_runs
from e2e.conftest import wait_until

TRAIN = "ClassificationTrain"
EPOCHS = 4
# Batches of 4 per rank: 20 steps per epoch (160 images, 2 ranks), long enough (several seconds) for a stop that
# comes early in epoch 2 to land inside it (the ranks vote on a stop about once a second of training).
BATCH = 4
STEPS = 160 // (2 * BATCH)


def _faults_resource(ws: real_runs.Workspace, name: str) -> dict:
    body = real_runs.train_resource(ws, name, epochs=EPOCHS)
    spec = body["spec"]["experimentSpec"]
    assert "batch_size_per_gpu: 16" in spec and "learning_rate: 0.05" in spec
    body["spec"]["experimentSpec"] = (spec.replace("batch_size_per_gpu: 16", f"batch_size_per_gpu: {BATCH}")
                                      .replace("learning_rate: 0.05", "learning_rate: 0.02"))
    return body


@pytest.fixture(scope="module", autouse=True)
def _real_mpi_operator(mpi_controller: str) -> None:
    if mpi_controller != "real":
        pytest.fail("the real-node runs need the real MPI Operator")


def _get(cluster: cl.ControlPlane, ws: real_runs.Workspace, name: str) -> dict:
    return ko.get_resource(cluster, TRAIN, name, ws.namespace)


def _pods(cluster: cl.ControlPlane, ws: real_runs.Workspace, prefix: str) -> list[dict]:
    return [p for p in cluster.get("pods", namespace=ws.namespace)["items"]
            if p["metadata"]["name"].startswith(prefix) and not p["metadata"].get("deletionTimestamp")]


def _finished(cluster: cl.ControlPlane, ws: real_runs.Workspace, name: str, timeout: float) -> dict:
    def check() -> dict | None:
        obj = _get(cluster, ws, name)
        return obj if obj.get("status", {}).get("phase") in ("Succeeded", "Failed") else None
    try:
        return wait_until(f"{name} finished", check, timeout=timeout, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_get(cluster, ws, name).get('status')}\n"
                             f"{real_runs.pod_logs(cluster, ws.namespace)}") from None


def test_a_worker_deleted_mid_run_costs_one_attempt_and_the_run_resumes_to_the_same_result(
        cluster: cl.ControlPlane, real_workspace: real_runs.Workspace) -> None:
    ws = real_workspace
    # The same spec twice (same seed): one run is left alone, the other loses a worker pod in epoch 2.
    calm = _faults_resource(ws, "calm")
    hit = _faults_resource(ws, "hit")
    ws.make_results_folder("calm")
    ws.make_results_folder("hit")
    cluster.apply(hit)

    first = "hit-train-g1"
    wait_until("epoch 1 done", lambda: (_get(cluster, ws, "hit").get("status", {}).get("progress") or {}).get(
        "epoch") == 1, timeout=600, interval=0.5)
    victim = _pods(cluster, ws, f"{first}-worker-1")
    assert victim, [p["metadata"]["name"] for p in cluster.get("pods", namespace=ws.namespace)["items"]]
    deleted_at = time.monotonic()
    cluster.kubectl("delete", "pod", victim[0]["metadata"]["name"], "-n", ws.namespace, "--wait=false")

    done = _finished(cluster, ws, "hit", timeout=900)
    st = done["status"]
    assert (st["phase"], st["attempt"]) == ("Succeeded", 2), (st.get("message"), st.get("runs"),
                                                              real_runs.pod_logs(cluster, ws.namespace)[-6000:])
    failures = next(r for r in st["runs"] if r["runHash"] == st["runHash"])["attemptFailures"]
    assert [f["attempt"] for f in failures] == [1], failures
    # A graceful stop, not a lost rank: the deleted pod's SIGTERM reached rank 1 (kestrel-worker, PID 1 of the worker
    # pod), the ranks agreed to stop, rank 0 checkpointed and every rank exited 143 (mpirun's exit code too).
    assert failures[0]["reason"] == "RunStopped", failures
    assert "stopped by signal 15 on rank 1: checkpoint written to" in failures[0]["message"], failures
    events = ko.events_for(cluster, ws.namespace, "hit")
    assert any(e["reason"] == "Retrying" and first in e["message"] for e in events), events
    # No pod of the failed attempt is left; the second attempt ran in the same folder and resumed there.
    assert _pods(cluster, ws, f"{first}-launcher") == [] and _pods(cluster, ws, f"{first}-worker") == []
    second = st["mpiJobName"]
    assert second == f"{first}-a2"
    launcher = _pods(cluster, ws, f"{second}-launcher")
    log = "".join(cluster.kubectl("logs", p["metadata"]["name"], "-n", ws.namespace).stdout
                          for p in launcher)
    # It resumed from a mid-epoch checkpoint of epoch 2 (not epoch 1's): epoch 2's steps before the stop are kept.
    resumed = re.search(rf"resuming from {re.escape(st['runPath'])}/weights/resnet_002_step(\d{{6}})\.tlt", log)
    assert resumed, [ln for ln in log.splitlines() if "resuming" in ln] or log[-3000:]
    step = int(resumed.group(1))
    assert 0 < step < STEPS, step
    assert f"1 epochs and {step} steps done" in log, log[-3000:]
    recovery = time.monotonic() - deleted_at
    progress = st["progress"]
    assert (progress["epoch"], progress["maxEpoch"]) == (EPOCHS, EPOCHS)
    rows = (ws.run_folder(done) / "training.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(e) for e in range(1, EPOCHS + 1)]

    # The uninterrupted run of the same spec: the resumed run ends at its accuracy within noise (160 validation
    # images: 8 images are 0.05).
    cluster.apply(calm)
    calm_done = _finished(cluster, ws, "calm", timeout=900)
    assert calm_done["status"]["phase"] == "Succeeded", calm_done["status"]
    hit_acc = float(rows[-1].split(",")[4])
    calm_rows = (ws.run_folder(calm_done) / "training.csv").read_text().splitlines()[1:]
    calm_acc = float(calm_rows[-1].split(",")[4])
    assert abs(hit_acc - calm_acc) <= 0.05, (hit_acc, calm_acc)
    print(f"\n[e2e] worker deleted in epoch 2: resumed from epoch 2 step {step}/{STEPS}, succeeded after "
          f"{recovery:.0f} s, val_acc {hit_acc:.4f} vs uninterrupted {calm_acc:.4f}")
