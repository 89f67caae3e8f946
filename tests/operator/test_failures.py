"""Failures that heal or explain themselves (issue 16), each against the in-memory API store:
API errors recorded and retried with backoff, SpecNotFound clearing when the ConfigMap appears, the
RoleBinding following serviceAccountName, kind in object names, spec edits (in place, restart after the
old pods are gone, invalid edits stop the run), MPIJobs deleted by hand, watch timeouts, the work queue."""

from __future__ import annotations

import asyncio

import kopf
import pytest

from kestrel_operator.handlers import kopf_handlers
from kestrel_operator.handlers.workqueue import WorkQueue
from tests.operator.conftest import TRAIN_SPEC, prune_body, train_body
from tests.operator.test_handlers import cond, put_run_pod

KEY = ("ClassificationTrain", "default", "resnet18")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ctl(rec, clock, monkeypatch) -> kopf_handlers.Controller:
    c = kopf_handlers.Controller(rec)
    c.queue = WorkQueue(c.process, clock=clock)
    monkeypatch.setitem(kopf_handlers._state, "controller", c)
    return c


def status(api, kind="ClassificationTrain", name="resnet18"):
    return api.body(kind, name).get("status") or {}


def reasons(api):
    return [(e[1], e[2]) for e in api.events]


# -- API errors: recorded in status with an Event, retried with backoff ------------------------------
def test_missing_mpijob_kind_is_explained_and_retried_with_backoff(api, ctl, clock):
    api.put(train_body())
    api.fail("create", "MPIJob", 404, times=2)  # the MPI Operator's CRD is not installed (yet)
    ctl.queue.add(KEY)
    assert ctl.queue.run_ready() == 1
    st = status(api)
    assert st["reason"] == "MPIJobCRDMissing" and "install the Kubeflow MPI Operator" in st["message"]
    assert ("Warning", "MPIJobCRDMissing") in reasons(api)
    assert ctl.queue.failures[KEY] == 1 and ctl.queue.run_ready() == 0  # not before its backoff

    clock.now += 0.5  # first retry after 0.5 s: fails again, next one after 1 s
    assert ctl.queue.run_ready() == 1 and ctl.queue.failures[KEY] == 2
    clock.now += 0.9
    assert ctl.queue.run_ready() == 0
    clock.now += 0.1
    assert ctl.queue.run_ready() == 1  # the CRD is there now: the run starts, the error clears
    assert KEY not in ctl.queue.failures and "MPIJob/resnet18-train-g1" in api.creates
    st = status(api)
    assert (st["phase"], st["reason"]) == ("Pending", "MPIJobPending")
    assert reasons(api).count(("Warning", "MPIJobCRDMissing")) == 1  # one Event per change, not per retry


def test_server_error_on_status_read_is_retried(api, ctl, clock):
    api.put(train_body())
    api.fail("get", "ClassificationTrain", 500)
    ctl.queue.add(KEY)
    ctl.queue.run_ready()
    assert api.creates == [] and ctl.queue.failures[KEY] == 1
    clock.now += ctl.queue.backoff(KEY)
    ctl.queue.run_ready()
    assert "MPIJob/resnet18-train-g1" in api.creates


def test_backoff_doubles_and_is_capped():
    q = WorkQueue(lambda key: None, base_delay=0.5, max_delay=30)
    delays = []
    for n in range(1, 10):
        q.failures["k"] = n
        delays.append(q.backoff("k"))
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_queue_collapses_events_and_reruns_a_key_changed_during_its_pass(clock):
    seen = []
    q = WorkQueue(lambda key: seen.append(key) or (q.add("a") if len(seen) == 1 else None), clock=clock)
    for key in ("a", "a", "b", "a"):
        q.add(key)
    assert q.run_ready() == 3 and seen == ["a", "b", "a"]  # "a" changed while it ran: once more, not twice
    q.add_after("c", 5)
    q.add_after("c", 2)  # the earlier request wins
    clock.now += 2
    assert q.run_ready() == 1 and seen[-1] == "c"


# -- SpecNotFound clears when the ConfigMap appears (a watch, not the next resource edit) ----------------
def test_spec_not_found_clears_when_the_configmap_appears(api, ctl):
    body = train_body(experimentSpecRef={"name": "specs", "key": "resnet.txt"})
    del body["spec"]["experimentSpec"]
    api.put(body)
    asyncio.run(kopf_handlers.on_resource_event(type="ADDED", body=kopf.Body(api.body(*KEY[:1], "resnet18"))))
    ctl.queue.run_ready()
    assert status(api)["reason"] == "SpecNotFound" and "create it" in status(api)["message"]

    cm = api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "specs"},
                  "data": {"resnet.txt": TRAIN_SPEC}})
    asyncio.run(kopf_handlers.on_configmap_event(type="ADDED", body=kopf.Body(cm)))
    assert ctl.queue.run_ready() == 1
    assert api.body("ConfigMap", "resnet18-train-g1-spec")["data"]["spec.txt"] == TRAIN_SPEC
    assert status(api)["reason"] == "MPIJobPending"


# -- RoleBinding subjects follow serviceAccountName -------------------------------------------------
def test_changed_service_account_is_bound_in_place(api, rec):
    api.put(train_body())
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    api.put(train_body(serviceAccountName="team-sa"))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))  # stops the old run
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))  # starts the new one
    binding = api.body("RoleBinding", "resnet18-train-kestrel-status")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "team-sa", "namespace": "default"}]
    assert "RoleBinding/resnet18-train-kestrel-status" in out.updated
    job = api.body("MPIJob", "resnet18-train-g2")
    assert job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["serviceAccountName"] == "team-sa"


# -- object names carry the kind ------------------------------------------------------------------
def test_train_and_prune_of_the_same_name_do_not_collide(api, rec):
    api.put(train_body(name="resnet18"))
    api.put(prune_body(name="resnet18", model={"path": "/results/model.tlt"}))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    rec.reconcile(api.body("ClassificationPrune", "resnet18"))
    assert status(api, "ClassificationPrune", "resnet18")["reason"] == "MPIJobPending"
    jobs = sorted(j["metadata"]["name"] for j in api.of_kind("MPIJob"))
    assert jobs == ["resnet18-prune-g1", "resnet18-train-g1"]
    assert len(api.of_kind("Role")) == 2 and len(api.of_kind("ServiceAccount")) == 2


# -- spec edits ------------------------------------------------------------------------------------
def _running(api, rec, **spec):
    api.put(train_body(**spec))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    api.set_mpijob_conditions("resnet18-train-g1", cond([("Created", "True"), ("Running", "True")]))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))


def test_tolerations_and_deadline_edits_update_the_run_in_place(api, rec):
    _running(api, rec)
    tol = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    api.put(train_body(tolerations=tol, activeDeadlineSeconds=3600))  # generation 2, same run
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert out.deleted == [] and out.created == [] and [j["metadata"]["name"] for j in api.of_kind("MPIJob")] == [
        "resnet18-train-g1"]
    job = api.body("MPIJob", "resnet18-train-g1")
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 3600
    launcher_tolerations = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["tolerations"]
    assert launcher_tolerations[:1] == tol  # the user's, then the operator's bounded ones of a lost node
    assert [t["key"] for t in launcher_tolerations[1:]] == ["node.kubernetes.io/unreachable",
                                                           "node.kubernetes.io/not-ready"]
    st = status(api)
    assert (st["phase"], st["observedGeneration"], st["mpiJobName"]) == ("Running", 2, "resnet18-train-g1")
    assert ("Normal", "RunUpdated") in reasons(api)


def test_edit_the_operator_rejects_stops_the_old_run(api, rec):
    _running(api, rec)
    # The CRD's pattern accepts this subPath; the operator refuses '..' (it would escape the volume).
    api.put(train_body(volumes={"data": {"claimName": "datasets"},
                                "results": {"claimName": "results", "subPath": "../other-team"}}))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    st = status(api)
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec") and "subPath" in st["message"]
    assert api.of_kind("MPIJob") == []  # status and cluster agree: nothing runs


def test_suspend_shows_suspended_and_resumes_in_place(api, rec):
    api.put(train_body(suspend=True))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert api.body("MPIJob", "resnet18-train-g1")["spec"]["runPolicy"]["suspend"] is True
    assert (status(api)["phase"], status(api)["reason"]) == ("Suspended", "Suspended")
    api.put(train_body(suspend=False))
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert out.created == [] and out.deleted == []
    assert api.body("MPIJob", "resnet18-train-g1")["spec"]["runPolicy"]["suspend"] is False
    assert status(api)["phase"] == "Pending"


# -- an MPIJob deleted by hand --------------------------------------------------------------------
def test_unfinished_run_whose_mpijob_was_deleted_starts_again(api, rec):
    _running(api, rec)
    put_run_pod(api, "resnet18-train-g1", "worker-0")
    api.delete("kubeflow.org/v2beta1", "MPIJob", "default", "resnet18-train-g1")
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert out.created == [] and status(api)["reason"] == "WaitingForOldRun"  # its pods first
    api.delete("v1", "Pod", "default", "resnet18-train-g1-worker-0")
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert "MPIJob/resnet18-train-g1" in out.created and ("Warning", "MPIJobRecreated") in reasons(api)


def test_finished_run_whose_mpijob_was_deleted_keeps_its_result(api, rec):
    _running(api, rec)
    api.set_mpijob_conditions("resnet18-train-g1", cond([("Succeeded", "True")]))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    api.delete("kubeflow.org/v2beta1", "MPIJob", "default", "resnet18-train-g1")
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert out.created == [] and status(api)["phase"] == "Succeeded"


# -- watches and resync ----------------------------------------------------------------------------
def test_watch_has_a_client_timeout_so_a_silently_dropped_watch_is_replaced():
    settings = kopf.OperatorSettings()
    kopf_handlers.configure_settings(settings)
    w = settings.watching
    assert w.server_timeout and w.client_timeout and w.client_timeout > w.server_timeout
    assert w.connect_timeout


def test_resync_queues_every_resource_in_every_namespace(api, ctl):
    api.put(train_body())
    other = prune_body(name="p2")
    other["metadata"]["namespace"] = "team-b"
    api.put(other)
    assert ctl.resync(()) == 2
    assert ctl.queue.run_ready() == 2
    assert status(api)["reason"] == "MPIJobPending"


def test_pod_event_queues_its_resource(api, ctl):
    api.put(train_body())
    ctl.queue.add(KEY)
    ctl.queue.run_ready()
    pod = put_run_pod(api, "resnet18-train-g1", "launcher-x", container="launcher", phase="Pending")
    asyncio.run(kopf_handlers.on_pod_event(type="MODIFIED", body=kopf.Body(pod)))
    assert ctl.queue.run_ready() == 1


def test_upgrading_the_operator_restarts_no_run(api, rec):
    """An MPIJob made by the previous operator version (old name, no run-hash label) stays the run."""
    _running(api, rec)
    job = api.objects.pop(("MPIJob", "default", "resnet18-train-g1"))
    job["metadata"]["name"] = "resnet18-g1"
    del job["metadata"]["labels"]["kestrel.dev/run-hash"]
    api.objects[("MPIJob", "default", "resnet18-g1")] = job
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert out.deleted == [] and out.created == []
    assert (status(api)["phase"], status(api)["mpiJobName"]) == ("Running", "resnet18-g1")


def test_worker_threads_run_passes_one_per_key_at_a_time():
    import threading
    import time

    running: set[str] = set()
    overlap: list[str] = []
    done = threading.Event()
    seen: list[str] = []

    def process(key):
        if key in running:
            overlap.append(key)
        running.add(key)
        time.sleep(0.01)
        running.discard(key)
        seen.append(key)
        if len(seen) >= 6:
            done.set()

    q = WorkQueue(process)
    q.start(3)
    try:
        for _ in range(3):
            for key in ("a", "b"):
                q.add(key)
            time.sleep(0.005)
        q.add_after("c", 0.05)
        assert done.wait(5) or "c" in seen
        deadline = time.monotonic() + 5
        while "c" not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        q.stop()
    assert overlap == [] and "c" in seen and {"a", "b"} <= set(seen)


def test_events_for_what_a_pass_wrote_itself_queue_nothing(api, ctl):
    api.put(train_body())
    ctl.queue.add(KEY)
    ctl.queue.run_ready()
    # The watch then reports our status patch and the MPIJob we created: nothing new in either.
    asyncio.run(kopf_handlers.on_resource_event(type="MODIFIED", body=kopf.Body(api.body(*KEY[:1], "resnet18"))))
    asyncio.run(kopf_handlers.on_mpijob_event(type="ADDED", body=kopf.Body(api.body("MPIJob", "resnet18-train-g1"))))
    assert ctl.queue.run_ready() == 0
    # The MPI Operator changes the MPIJob (a new resourceVersion): that is news.
    api.set_mpijob_conditions("resnet18-train-g1", cond([("Created", "True")]))
    asyncio.run(kopf_handlers.on_mpijob_event(type="MODIFIED", body=kopf.Body(api.body("MPIJob",
                                                                                      "resnet18-train-g1"))))
    assert ctl.queue.run_ready() == 1 and status(api)["reason"] == "MPIJobCreated"


def test_a_spec_edit_folded_into_the_event_of_our_status_patch_is_not_lost(api, ctl):
    api.put(train_body())
    ctl.queue.add(KEY)
    ctl.queue.run_ready()
    body = api.body(*KEY[:1], "resnet18")
    body["metadata"]["generation"] = 2  # same resourceVersion as our patch, but a newer spec
    asyncio.run(kopf_handlers.on_resource_event(type="MODIFIED", body=kopf.Body(body)))
    assert ctl.queue.run_ready() == 1
