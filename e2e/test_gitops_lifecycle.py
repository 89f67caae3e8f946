"""GitOps retraining on the real node, one ClassificationTrain through its life, as a Git repository drives it
(`kubectl apply` of each commit): run A -> an edit trains run B from scratch in its own folder (A's files
unchanged) -> a revert to A's spec takes A's result back with no new pod -> a change whose run misses the
promotion gate ends Succeeded with Promoted=False, A stays the promoted model, and an Export with fromTrain does
not re-run. At each step the real object's health is computed by kstatus itself (Flux's library, e2e/kstatus.py)
and by the shipped Argo CD health check in a real Lua 5.1 (tests/operator/argocd_lua.py); `kubectl get` shows
progress and ETA while the run trains. With KESTREL_E2E_CAPTURE set, the objects are kept as the Argo CD checks'
fixtures (e2e/captures.py)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import node as node_mod
from e2e import real_runs
from e2e.captures import capture, capture_text
from e2e.conftest import wait_until
from e2e.kstatus import kstatus
from tests.operator.argocd_lua import argocd_health
from tests.train.conftest import TINY_SPEC

NAME = "gitops"
TRAIN = "ClassificationTrain"
OPEN_GATE = {"metric": "top1", "minimum": 0.0}
# Fashion-MNIST after one epoch on 160 images is far below this: the run must miss the gate.
STRICT_GATE = {"metric": "top1", "minimum": 0.99}


@pytest.fixture(scope="module", autouse=True)
def _real_mpi_operator(mpi_controller: str) -> None:
    if mpi_controller != "real":
        pytest.fail("the real-node runs need the real MPI Operator")


def _train(ws: real_runs.Workspace, epochs: int, gate: dict) -> dict:
    """One rank in the launcher pod (a single pod per run keeps the four runs short)."""
    res = real_runs.train_resource(ws, NAME, processes=1, epochs=epochs)
    res["spec"]["promotion"] = gate
    return res


def _apply(cluster: cl.ControlPlane, obj: dict) -> dict:
    """kubectl apply; the object as stored, before the operator has seen this generation."""
    out = cluster.kubectl("apply", "-f", "-", "-o", "json", input=yaml.safe_dump(obj))
    return json.loads(out.stdout)


def _get(cluster: cl.ControlPlane, ws: real_runs.Workspace, kind: str = TRAIN, name: str = NAME) -> dict:
    return ko.get_resource(cluster, kind, name, ws.namespace)


def _health(obj: dict) -> tuple[str, str]:
    """(kstatus status, Argo CD health status) of a real object."""
    return kstatus(obj)[0], argocd_health(obj["kind"], obj)[0]


def _settled(cluster: cl.ControlPlane, ws: real_runs.Workspace, generation: int, timeout: float = 600,
             kind: str = TRAIN, name: str = NAME) -> dict:
    """The resource once status describes `generation` and its run finished."""
    def check() -> dict | None:
        obj = _get(cluster, ws, kind, name)
        st = obj.get("status") or {}
        done = st.get("observedGeneration") == generation and st.get("phase") in ("Succeeded", "Failed")
        return obj if done else None
    try:
        return wait_until(f"{kind} {name} generation {generation} finished", check, timeout=timeout, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_get(cluster, ws, kind, name).get('status')}\n"
                             f"{real_runs.pod_logs(cluster, ws.namespace)}") from None


def _host(ws: real_runs.Workspace, status: dict, name: str = NAME) -> Path:
    """The run's folder (status.runPath, as the pods see it) on this machine."""
    return ws.results_of(name) / Path(status["runPath"]).relative_to(real_runs.RESULTS_MOUNT)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _pods_and_jobs(cluster: cl.ControlPlane, ws: real_runs.Workspace) -> tuple[set[str], set[str]]:
    pods = {p["metadata"]["uid"] for p in cluster.get("pods", namespace=ws.namespace)["items"]}
    jobs = {j["metadata"]["uid"] for j in cluster.get("mpijobs", namespace=ws.namespace)["items"]}
    return pods, jobs


def _launcher_log(cluster: cl.ControlPlane, ws: real_runs.Workspace, job: str) -> str:
    pods = cluster.get("pods", namespace=ws.namespace)["items"]
    names = [p["metadata"]["name"] for p in pods if p["metadata"]["name"].startswith(f"{job}-launcher")]
    assert names, [p["metadata"]["name"] for p in pods]
    return cluster.kubectl("logs", names[-1], "-n", ws.namespace).stdout


def _watch_progress(cluster: cl.ControlPlane, ws: real_runs.Workspace) -> tuple[dict, str, dict]:
    """While the run trains: the printer columns' row with a progress, `kubectl get`'s text, and the object."""
    path = f"/apis/kestrel.dev/v1alpha1/namespaces/{ws.namespace}/classificationtrains"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        rows = [r for r in cluster.table(path) if r["Name"] == NAME]
        obj = _get(cluster, ws)
        if rows and rows[0].get("Progress") is not None and obj["status"].get("phase") == "Running":
            printed = cluster.kubectl("get", "classificationtrains", NAME, "-n", ws.namespace).stdout
            return rows[0], printed, obj
        if obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"the run ended before any progress was seen: {obj['status']}")
        time.sleep(0.3)
    raise AssertionError(f"no progress in 600 s: {_get(cluster, ws).get('status')}")


def test_a_suspended_run_is_suspended_for_argo_cd_and_in_progress_for_kstatus(
        cluster: cl.ControlPlane, real_workspace: real_runs.Workspace) -> None:
    ws = real_workspace
    held = real_runs.train_resource(ws, "gitops-held", processes=1, epochs=1)
    held["spec"]["suspend"] = True
    ws.make_results_folder("gitops-held")
    cluster.apply(held)
    obj = wait_until("Suspended", lambda: (o := _get(cluster, ws, TRAIN, "gitops-held")).get("status", {}).get(
        "phase") == "Suspended" and o, timeout=60)
    assert _health(obj) == ("InProgress", "Suspended"), obj["status"]
    capture(obj, "train-suspended")
    cluster.kubectl("delete", "classificationtrain", "gitops-held", "-n", ws.namespace, "--wait=false")


def test_gitops_retraining_lifecycle(cluster: cl.ControlPlane, real_workspace: real_runs.Workspace) -> None:
    ws = real_workspace
    ws.make_results_folder(NAME)

    # -- run A ------------------------------------------------------------------------------------------------
    stored = _apply(cluster, _train(ws, epochs=3, gate=OPEN_GATE))
    assert "status" not in stored and argocd_health(TRAIN, stored)[0] == "Progressing"
    capture(stored, "train-progressing-no-status")
    row, printed, running = _watch_progress(cluster, ws)
    assert 0 <= row["Progress"] <= 100 and isinstance(row["ETA"], str), row
    assert "PROGRESS" in printed and "ETA" in printed, printed
    assert _health(running) == ("InProgress", "Progressing"), running["status"]
    capture(running, "train-progressing-running")
    capture_text(printed, "kubectl-get-ctrain-running")
    a = _settled(cluster, ws, 1)
    st_a = a["status"]
    assert (st_a["phase"], st_a["reason"]) == ("Succeeded", "Promoted"), st_a
    assert st_a["promoted"]["runHash"] == st_a["runHash"] and st_a["progress"]["percent"] == 100
    assert 0.0 <= st_a["promoted"]["evaluation"]["top1Accuracy"] <= 1.0
    assert _health(a) == ("Current", "Healthy"), st_a
    capture(a, "train-healthy")
    folder_a = _host(ws, st_a)
    assert sorted(p.name for p in (folder_a / "weights").glob("*.tlt")) == [f"resnet_{e:03d}.tlt" for e in (1, 2, 3)]
    assert json.loads((folder_a / "evaluate" / "results.json").read_text())["top_1_accuracy"] == pytest.approx(
        st_a["promoted"]["evaluation"]["top1Accuracy"])
    files_a = _digests(folder_a)

    # -- an edit: run B from scratch in its own folder ---------------------------------------------------------
    stored = _apply(cluster, _train(ws, epochs=2, gate=OPEN_GATE))
    assert stored["metadata"]["generation"] == 2 and stored["status"]["observedGeneration"] == 1
    assert _health(stored) == ("InProgress", "Progressing")
    capture(stored, "train-progressing-generation-behind")
    b = _settled(cluster, ws, 2)
    st_b = b["status"]
    assert st_b["phase"] == "Succeeded" and st_b["runHash"] != st_a["runHash"], st_b
    log_b = _launcher_log(cluster, ws, st_b["mpiJobName"])
    assert "epoch 1/2" in log_b and "resuming from" not in log_b, log_b[-3000:]
    folder_b = _host(ws, st_b)
    assert folder_b != folder_a
    assert sorted(p.name for p in (folder_b / "weights").glob("*.tlt")) == ["resnet_001.tlt", "resnet_002.tlt"]
    assert _digests(folder_a) == files_a  # A's files untouched
    assert _health(b) == ("Current", "Healthy")

    # -- git revert: A's result back, no pod -------------------------------------------------------------------
    pods, jobs = _pods_and_jobs(cluster, ws)
    _apply(cluster, _train(ws, epochs=3, gate=OPEN_GATE))
    reverted = _settled(cluster, ws, 3, timeout=60)
    st = reverted["status"]
    assert (st["phase"], st["reason"], st["runHash"]) == ("Succeeded", "RunReused", st_a["runHash"]), st
    assert st["outputPath"] == st_a["outputPath"] and st["promoted"]["runHash"] == st_a["runHash"]
    new_pods, new_jobs = _pods_and_jobs(cluster, ws)
    assert new_pods <= pods and new_jobs <= jobs  # nothing was created
    assert any(e["reason"] == "RunReused" and st_a["runHash"] in e["message"]
               for e in ko.events_for(cluster, ws.namespace, NAME))
    assert _health(reverted) == ("Current", "Healthy")
    capture(reverted, "train-healthy-run-reused")

    # -- an Export of the promoted model -------------------------------------------------------------------
    export = {
        "apiVersion": "kestrel.dev/v1alpha1", "kind": "ClassificationExport",
        "metadata": {"name": "gitops-export", "namespace": ws.namespace},
        "spec": {"model": {"fromTrain": NAME}, "keySecretRef": {"name": real_runs.KEY_SECRET, "key": "key"},
                 "experimentSpec": TINY_SPEC.format(data=real_runs.DATA_MOUNT, epochs=1, mixup=0.0),
                 "dataType": "fp32", "outputPath": "/results/export/gitops.onnx", "image": ws.image,
                 "imagePullPolicy": "Never", "nodeSelector": dict(node_mod.NODE_SELECTOR),
                 "tolerations": list(node_mod.NODE_TOLERATIONS),
                 "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                 "volumes": {"data": {"claimName": real_runs.DATA_CLAIM, "mountPath": real_runs.DATA_MOUNT},
                             "results": {"claimName": real_runs.RESULTS_CLAIM, "subPath": "gitops-export",
                                         "mountPath": real_runs.RESULTS_MOUNT}}},
    }
    ws.make_results_folder("gitops-export")
    cluster.apply(export)
    pending = wait_until("export status", lambda: (o := _get(cluster, ws, "ClassificationExport", "gitops-export"))
                         .get("status", {}).get("phase") in ("Pending", "Running") and o, timeout=60)
    assert _health(pending) == ("InProgress", "Progressing"), pending["status"]
    capture(pending, "export-progressing")
    exported = _settled(cluster, ws, 1, kind="ClassificationExport", name="gitops-export", timeout=420)
    st_e = exported["status"]
    assert st_e["phase"] == "Succeeded", st_e
    assert f"/runs/{st_a['runHash']}/weights/" in st_e["inputModelPath"]
    assert (_host(ws, st_e, "gitops-export") / "export" / "gitops.onnx").is_file()
    assert _health(exported) == ("Current", "Healthy")
    capture(exported, "export-healthy")
    export_jobs = _export_jobs(cluster, ws)

    # -- a change whose run misses the gate ------------------------------------------------------------------
    _apply(cluster, _train(ws, epochs=1, gate=STRICT_GATE))
    c = _settled(cluster, ws, 4)
    st_c = c["status"]
    assert (st_c["phase"], st_c["reason"]) == ("Succeeded", "PromotionRejected"), st_c
    assert st_c["runHash"] not in (st_a["runHash"], st_b["runHash"])
    assert st_c["promoted"]["runHash"] == st_a["runHash"]
    promoted = _condition(c, "Promoted")
    assert promoted["status"] == "False" and "0.9900" in promoted["message"], promoted
    top1 = next(r for r in st_c["runs"] if r["runHash"] == st_c["runHash"])["evaluation"]["top1Accuracy"]
    assert f"{top1:.4f}" in promoted["message"]
    assert _condition(c, "Ready")["status"] == "False" and _condition(c, "Stalled")["status"] == "True"
    assert _health(c) == ("Failed", "Degraded")
    capture(c, "train-degraded-promotion-rejected")

    # The Export follows only the promoted model: after resyncs (5 s here) it still has its run and nothing new.
    time.sleep(12)
    again = _get(cluster, ws, "ClassificationExport", "gitops-export")
    assert again["status"]["runHash"] == st_e["runHash"] and again["status"]["phase"] == "Succeeded"
    assert _export_jobs(cluster, ws) == export_jobs


def _condition(obj: dict, ctype: str) -> dict:
    found = [c for c in obj["status"].get("conditions") or [] if c["type"] == ctype]
    assert len(found) == 1, obj["status"].get("conditions")
    return found[0]


def _export_jobs(cluster: cl.ControlPlane, ws: real_runs.Workspace) -> list[str]:
    return sorted(j["metadata"]["uid"] for j in cluster.get("mpijobs", namespace=ws.namespace)["items"]
                  if j["metadata"]["name"].startswith("gitops-export-"))
