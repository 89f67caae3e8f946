"""Queueing for real: Kueue's controller (sigs.k8s.io/kueue, e2e/kueue.py) admits ClassificationTrains queued with
Kueue's label on the resource, on the real node. A ClusterQueue whose CPU quota fits one run: the second run waits
Suspended/Queued with Kueue's own reason in its status until the first finishes, then runs and succeeds. A
higher-priority run preempts a running one (WorkloadPriorityClass, preemption withinClusterQueue: LowerPriority);
the preempted run is admitted again once the quota is free and resumes from its checkpoint to the spec's last
epoch. What happens at the preemption is recorded (a timeline from the API) and printed."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import kueue as kueue_mod
from e2e import real_runs

TRAIN = "ClassificationTrain"
QUEUE = "team-a"
CLUSTER_QUEUE = "kestrel-e2e"
FLAVOR = "kestrel-e2e-default"
# One run asks for 100m CPU / 256Mi (real_runs.train_resource's rank requests; numProcesses 1: the launcher pod
# runs the rank): 150m fits one and not two.
CPU_QUOTA = "150m"
MEMORY_QUOTA = "1Gi"
LOW, HIGH = "kestrel-e2e-low", "kestrel-e2e-high"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
NAMES = ("first", "second", "low", "high")


@pytest.fixture(scope="module", autouse=True)
def _real_mpi_operator(mpi_controller: str) -> None:
    if mpi_controller != "real":
        pytest.fail("the real-node runs need the real MPI Operator")


@pytest.fixture(scope="module")
def queue(cluster: cl.ControlPlane, kueue: kueue_mod.Kueue, real_workspace: real_runs.Workspace) -> Iterator[str]:
    """A ResourceFlavor, a ClusterQueue for the workspace's namespace (CPU quota for one run, preemption of
    lower priorities within it), the LocalQueue `team-a` there, and two WorkloadPriorityClasses. Afterwards this
    module's trains go while Kueue still runs (it removes its finalizer from their Workloads), then the queues."""
    ns = real_workspace.namespace
    api = kueue_mod.API
    objects = [
        {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}},
        {"apiVersion": api, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE}, "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "queueingStrategy": "BestEffortFIFO",
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [{"name": FLAVOR, "resources": [
                {"name": "cpu", "nominalQuota": CPU_QUOTA}, {"name": "memory", "nominalQuota": MEMORY_QUOTA}]}]}]}},
        {"apiVersion": api, "kind": "LocalQueue", "metadata": {"name": QUEUE, "namespace": ns},
         "spec": {"clusterQueue": CLUSTER_QUEUE}},
        {"apiVersion": api, "kind": "WorkloadPriorityClass", "metadata": {"name": LOW}, "value": 100,
         "description": "e2e: may be preempted"},
        {"apiVersion": api, "kind": "WorkloadPriorityClass", "metadata": {"name": HIGH}, "value": 1000,
         "description": "e2e: preempts lower priorities"},
    ]
    cluster.apply(objects)

    def active() -> bool:
        cq = cluster.get("clusterqueue", CLUSTER_QUEUE)
        return any(c["type"] == "Active" and c["status"] == "True" for c in cq.get("status", {}).get("conditions", []))

    try:
        _wait("ClusterQueue active", active, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; Kueue's log:\n{kueue.proc.log_tail(40)}") from None
    yield QUEUE
    cluster.kubectl("delete", "classificationtrains", *NAMES, "-n", ns, "--ignore-not-found", "--wait=false",
                    check=False)
    try:
        _wait("this module's Workloads gone", lambda: not _api_list(
            cluster, f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{ns}/workloads"), timeout=120)
    finally:
        for obj in reversed(objects):
            cluster.kubectl("delete", obj["kind"].lower() + "." + api.split("/")[0], obj["metadata"]["name"],
                            *(["-n", ns] if "namespace" in obj["metadata"] else []), "--ignore-not-found",
                            "--wait=false", check=False)


def _wait(what: str, check: Callable[[], Any], timeout: float, tick: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a transient miss; reported on timeout
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last})" if last else ""))


def _queued_train(ws: real_runs.Workspace, name: str, epochs: int, priority: str | None = None) -> dict:
    """A 1-rank CPU train queued the GitOps way: Kueue's label on the resource's own metadata."""
    res = real_runs.train_resource(ws, name, processes=1, epochs=epochs)
    res["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": QUEUE}
    if priority:
        res["spec"]["labels"] = {PRIORITY_LABEL: priority}  # on the MPIJob (and its pods): Kueue reads it there
    ws.make_results_folder(name)
    return res


def _get(cluster: cl.ControlPlane, ws: real_runs.Workspace, name: str) -> dict:
    return ko.get_resource(cluster, TRAIN, name, ws.namespace)


def _status(cluster: cl.ControlPlane, ws: real_runs.Workspace, name: str) -> dict:
    return _get(cluster, ws, name).get("status") or {}


def _api_list(cluster: cl.ControlPlane, path: str) -> list[dict]:
    return cluster.get_json(path).get("items") or []


class Timeline:
    """What the API says about the runs, polled: each change of a run's status, its MPIJobs (suspend, conditions),
    its pods (phase, deletion, exit codes) and Workloads, with the seconds since `start()`."""

    def __init__(self, cluster: cl.ControlPlane, ws: real_runs.Workspace, names: list[str]) -> None:
        self.cluster, self.ws, self.names = cluster, ws, names
        self.t0 = time.monotonic()
        self.last: dict[str, str] = {}
        self.present: set[str] = set()  # keys seen in the current poll: a pod, Job ... missing from it is gone
        self.lines: list[str] = []

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.lines.append(f"t=0.0 s ({time.strftime('%H:%M:%S', time.gmtime())} UTC): high-priority run applied")

    def _note(self, key: str, text: str) -> None:
        self.present.add(key)
        if self.last.get(key) != text:
            self.last[key] = text
            self.lines.append(f"t={time.monotonic() - self.t0:.1f} s {key}: {text}")

    def tick(self) -> None:
        ns = self.ws.namespace
        before = set(self.last)
        self.present = set()
        try:
            for name in self.names:
                st = _status(self.cluster, self.ws, name)
                progress = st.get("progress") or {}
                self._note(f"{name} status", f"{st.get('phase')}/{st.get('reason')} attempt {st.get('attempt')} "
                                             f"epoch {progress.get('epoch')}: {st.get('message')}")
            for job in _api_list(self.cluster, f"/apis/kubeflow.org/v2beta1/namespaces/{ns}/mpijobs"):
                conds = ",".join(f"{c['type']}={c['status']}({c.get('reason')})"
                                 for c in job.get("status", {}).get("conditions", []))
                suspend = job["spec"].get("runPolicy", {}).get("suspend")
                self._note(f"MPIJob {job['metadata']['name']}", f"suspend={suspend} {conds}")
            for job in _api_list(self.cluster, f"/apis/batch/v1/namespaces/{ns}/jobs"):
                conds = ",".join(f"{c['type']}={c['status']}" for c in job.get("status", {}).get("conditions", []))
                self._note(f"Job {job['metadata']['name']}", f"suspend={job['spec'].get('suspend')} "
                                                             f"failed={job['status'].get('failed', 0)} {conds}")
            for pod in _api_list(self.cluster, f"/api/v1/namespaces/{ns}/pods"):
                states = []
                for cs in pod.get("status", {}).get("containerStatuses") or []:
                    term = (cs.get("state") or {}).get("terminated")
                    states.append(f"{cs['name']}:exit {term['exitCode']}" if term else
                                  f"{cs['name']}:{next(iter(cs.get('state') or {'?': 0}))}")
                deleting = " deleting" if pod["metadata"].get("deletionTimestamp") else ""
                self._note(f"pod {pod['metadata']['name']}", f"{pod['status'].get('phase')}{deleting} {states}")
            for wl in _api_list(self.cluster, f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{ns}/workloads"):
                conds = "; ".join(f"{c['type']}={c['status']}({c.get('reason')}: {c.get('message')})"
                                  for c in wl.get("status", {}).get("conditions", []))
                self._note(f"Workload {wl['metadata']['name']}", conds)
        except Exception as exc:  # noqa: BLE001 - a poll that missed; the next one catches up
            self._note("poll", f"error {exc}")
            return
        for key in sorted(before - self.present):
            if key.split(" ")[0] in ("pod", "Job", "MPIJob", "Workload") and self.last.get(key) != "gone":
                self.last[key] = "gone"
                self.lines.append(f"t={time.monotonic() - self.t0:.1f} s {key}: gone")

    def text(self) -> str:
        return "\n".join(self.lines)


def _launcher_logs(cluster: cl.ControlPlane, ws: real_runs.Workspace, job_prefix: str) -> str:
    pods = [p for p in cluster.get("pods", namespace=ws.namespace)["items"]
            if p["metadata"]["name"].startswith(job_prefix) and "-launcher" in p["metadata"]["name"]]
    return "\n".join(cluster.kubectl("logs", p["metadata"]["name"], "-n", ws.namespace, check=False).stdout
                     for p in pods)


def test_kueues_webhook_holds_an_mpijob_created_unsuspended_in_a_queue(
        cluster: cl.ControlPlane, real_workspace: real_runs.Workspace, queue: str) -> None:
    """Kueue's admission webhook is live (called by the API server at the process, TLS from the e2e CA): an MPIJob
    created in a queue without runPolicy.suspend is stored suspended and gets a Workload. The operator creates queued
    MPIJobs suspended itself; this is what holds any other MPIJob in the queue."""
    ns = real_workspace.namespace
    job = {"apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob",
           "metadata": {"name": "webhook-probe", "namespace": ns, "labels": {"kueue.x-k8s.io/queue-name": queue}},
           "spec": {"slotsPerWorker": 1, "runLauncherAsWorker": True, "mpiReplicaSpecs": {"Launcher": {
               "replicas": 1, "template": {"spec": {"containers": [{
                   "name": "launcher", "image": real_workspace.image, "command": ["true"],
                   "resources": {"requests": {"cpu": "10"}}}]}}}}}}  # more than the queue has: never admitted
    cluster.apply(job)
    try:
        stored = cluster.get("mpijob", "webhook-probe", ns)
        assert stored["spec"]["runPolicy"].get("suspend") is True, stored["spec"]
        uid = stored["metadata"]["uid"]
        path = f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{ns}/workloads?labelSelector=kueue.x-k8s.io/job-uid%3D{uid}"
        workload = _wait("its Workload", lambda: _api_list(cluster, path), timeout=60)
        assert workload[0]["spec"]["queueName"] == queue
    finally:
        cluster.kubectl("delete", "mpijob", "webhook-probe", "-n", ns, "--ignore-not-found", check=False)


def test_second_train_waits_in_the_queue_with_kueues_reason_until_the_first_finishes(
        cluster: cl.ControlPlane, real_workspace: real_runs.Workspace, queue: str) -> None:  # noqa: ARG001
    ws = real_workspace
    cluster.apply(_queued_train(ws, "first", epochs=2))
    _wait("first admitted and running", lambda: _status(cluster, ws, "first").get("phase") == "Running", 300)
    applied = time.monotonic()
    cluster.apply(_queued_train(ws, "second", epochs=2))

    def queued_with_kueues_reason() -> dict | None:
        st = _status(cluster, ws, "second")
        return st if st.get("reason") == "Queued" and "insufficient" in st.get("message", "") else None

    held = _wait("second Suspended/Queued with Kueue's reason", queued_with_kueues_reason, 120)
    print(f"\n[e2e] second, {time.monotonic() - applied:.1f} s after its apply while the first runs: "
          f"{held['phase']}/{held['reason']}: {held['message']}")
    assert held["phase"] == "Suspended"
    assert f"LocalQueue {QUEUE}" in held["message"] and "quota for cpu" in held["message"]
    assert "Workload mpijob-second-train-g1-" in held["message"], held
    pods = [p["metadata"]["name"] for p in cluster.get("pods", namespace=ws.namespace)["items"]
            if p["metadata"]["name"].startswith("second-")]
    assert pods == [], pods

    first = ko.wait_phase(cluster, TRAIN, "first", ws.namespace, "Succeeded", timeout=600)
    # The second stays queued while the first runs: it is never Running before the first finished.
    second = ko.wait_phase(cluster, TRAIN, "second", ws.namespace, "Succeeded", timeout=600)
    f_st, s_st = first["status"], second["status"]
    assert s_st["startTime"] >= f_st["completionTime"], (f_st, s_st)
    for st in (f_st, s_st):
        assert (st["progress"]["epoch"], st["progress"]["maxEpoch"]) == (2, 2), st
    print(f"[e2e] first {f_st['startTime']} -> {f_st['completionTime']}, second {s_st['startTime']} -> "
          f"{s_st['completionTime']}")


def _launcher_pod(cluster: cl.ControlPlane, ws: real_runs.Workspace, job: str) -> str | None:
    for pod in cluster.get("pods", namespace=ws.namespace)["items"]:
        name = pod["metadata"]["name"]
        if name.startswith(f"{job}-launcher") and not pod["metadata"].get("deletionTimestamp") \
                and pod["status"].get("phase") == "Running":
            return name
    return None


def _follow_log(cluster: cl.ControlPlane, ws: real_runs.Workspace, pod: str, into: Path) -> subprocess.Popen:
    """`kubectl logs -f` of a pod into a file: the log outlives the pod, which a preemption deletes."""
    with open(into, "wb") as out:
        return subprocess.Popen([str(cluster.bin / "kubectl"), "logs", "-f", pod, "-n", ws.namespace], stdout=out,
                                stderr=subprocess.STDOUT, env=cluster.env())


def test_higher_priority_train_preempts_and_the_preempted_run_resumes_from_its_checkpoint(
        cluster: cl.ControlPlane, real_workspace: real_runs.Workspace, queue: str, tmp_path: Path) -> None:  # noqa: ARG001
    ws = real_workspace
    epochs = 8
    timeline = Timeline(cluster, ws, ["low", "high"])
    cluster.apply(_queued_train(ws, "low", epochs=epochs, priority=LOW))
    first_pod = _wait("low's launcher running", lambda: _launcher_pod(cluster, ws, "low-train-g1"), 600)
    first_log = tmp_path / "low-first-launcher.log"
    follower = _follow_log(cluster, ws, first_pod, first_log)

    def trained_an_epoch() -> bool:
        st = _status(cluster, ws, "low")
        return st.get("phase") == "Running" and (st.get("progress") or {}).get("epoch", 0) >= 1

    _wait("low trained its first epoch", trained_an_epoch, 600)
    before = _status(cluster, ws, "low")
    timeline.start()
    cluster.apply(_queued_train(ws, "high", epochs=1, priority=HIGH))
    seen: dict[str, Any] = {}

    def watch() -> None:
        timeline.tick()
        st = _status(cluster, ws, "low")
        if st.get("phase") == "Suspended" and "Preempted to accommodate a workload" in st.get("message", ""):
            seen.setdefault("low_preempted", st)
        if _status(cluster, ws, "high").get("phase") == "Running" and "high_running" not in seen:
            low_pods = [p["metadata"]["name"] for p in cluster.get("pods", namespace=ws.namespace)["items"]
                        if p["metadata"]["name"].startswith("low-") and p["status"].get("phase") in ("Pending",
                                                                                                       "Running")]
            seen["high_running"] = {"low_status": st, "low_pods": low_pods}

    try:
        high = _wait("high Succeeded", lambda: _status(cluster, ws, "high").get("phase") == "Succeeded" and
                     _get(cluster, ws, "high"), 900, watch)
        low = _wait("low finished", lambda: _status(cluster, ws, "low").get("phase") in ("Succeeded", "Failed")
                    and _get(cluster, ws, "low"), 900, watch)
    finally:
        follower.wait(timeout=60)
        print(f"\n[e2e] preemption timeline (low at epoch {before.get('progress', {}).get('epoch')} of {epochs} "
              f"when high was applied):\n{timeline.text()}")
    st, high_st = low["status"], high["status"]
    stopped = first_log.read_text(errors="replace")
    resumed = _launcher_logs(cluster, ws, "low-train-g1")
    weights = ws.run_folder(low) / "weights"
    print("[e2e] the preempted launcher said:\n" + "\n".join(
        ln for ln in stopped.splitlines() if "signal" in ln or "checkpoint" in ln))
    print("[e2e] the re-admitted launcher said:\n" + "\n".join(ln for ln in resumed.splitlines() if "resuming" in ln))
    print(f"[e2e] low's checkpoints: {sorted(p.name for p in weights.iterdir())}")

    # Kueue took the quota back for the higher priority: the low run showed it, Suspended/Queued with Kueue's words,
    # and had no pod left when the high one ran.
    assert "low_preempted" in seen, timeline.text()
    assert seen["low_preempted"]["reason"] == "Queued", seen["low_preempted"]
    assert seen["high_running"]["low_pods"] == [], seen["high_running"]
    assert high_st["phase"] == "Succeeded", high_st
    # The trainer got SIGTERM when Kueue suspended the MPIJob and the MPI Operator deleted its pod, and checkpointed
    # mid-run before it exited (trainer_image/kestrel_trainer/train/loop.py: exit 143).
    assert "received signal 15" in stopped and "checkpoint written to" in stopped, stopped[-3000:]
    partial = [p.name for p in weights.glob("resnet_*_step*.tlt")]
    assert partial, sorted(p.name for p in weights.iterdir())
    # Re-admitted when the high run finished: the same MPIJob (no retry spent), the same run folder, resumed from that
    # checkpoint, to the spec's last epoch, each epoch trained once.
    assert st["phase"] == "Succeeded", st
    assert (st["mpiJobName"], st["attempt"]) == ("low-train-g1", 1), st
    assert f"resuming from {st['runPath']}/weights/{partial[0]}" in resumed, resumed[-3000:]
    assert st["startTime"] >= high_st["completionTime"], (st, high_st)
    assert (st["progress"]["epoch"], st["progress"]["maxEpoch"]) == (epochs, epochs), st
    # Each epoch once in training.csv; when the signal came in an epoch's last step, the trainer saved it as step 0
    # of the next epoch and skips that epoch's validation row (trainer_image/kestrel_trainer/train/callbacks.py).
    epoch, step = (int(x) for x in re.match(r"resnet_(\d+)_step(\d+)", partial[0]).groups())
    skipped = epoch - 1 if step == 0 else None
    rows = (ws.run_folder(low) / "training.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(e) for e in range(1, epochs + 1) if e != skipped], rows
    assert (weights / f"resnet_{epochs:03d}.tlt").is_file()
