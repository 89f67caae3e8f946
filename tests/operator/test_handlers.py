"""The reconciler and the kopf handlers against an in-memory API store: what gets created, status
mapping, events, the invalid-spec path, restarts on spec change, waiting for upstream models."""

from __future__ import annotations

import asyncio
import logging

import kopf
import pytest

from kestrel_operator.handlers import kopf_handlers
from kestrel_operator.handlers.reconcile import Reconciler
from tests.operator.conftest import TRAIN_SPEC, prune_body, train_body

RUN_KINDS = ["ServiceAccount/resnet18-train-kestrel", "Role/resnet18-train-kestrel-status",
             "RoleBinding/resnet18-train-kestrel-status", "ConfigMap/resnet18-train-g1-spec",
             "PodDisruptionBudget/resnet18-train-g1", "MPIJob/resnet18-train-g1"]


def status(api, kind="ClassificationTrain", name="resnet18"):
    return api.body(kind, name).get("status") or {}


def put_run_pod(api, job, suffix, container="worker", **pod_status):
    """A pod of `job` as the MPI Operator makes it: the template's labels, on a node."""
    template = api.body("MPIJob", job)["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]
    return api.put({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"{job}-{suffix}", "labels": dict(template["metadata"]["labels"])},
                    "spec": {"nodeName": "node-1", "containers": [{"name": container}]},
                    "status": pod_status or {"phase": "Running"}})


def cond(conds):
    return [{"type": t, "status": s, "reason": f"MPIJob{t}", "message": t} for t, s in conds]


def test_create_then_idempotent(api, rec):
    api.put(train_body())
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert api.creates == RUN_KINDS
    st = status(api)
    assert (st["phase"], st["reason"], st["observedGeneration"], st["mpiJobName"]) == (
        "Pending", "MPIJobPending", 1, "resnet18-train-g1")
    # One Event for the new run (a second, Normal "Pending" transition in the same pass would repeat it).
    assert [(e[1], e[2]) for e in api.events] == [("Normal", "MPIJobCreated")]
    assert out.created == RUN_KINDS

    # Same state again: nothing created, no status write, no events.
    n_events, n_patches = len(api.events), len(api.status_patches)
    again = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert again.created == [] and again.status_patch is None
    assert (len(api.events), len(api.status_patches)) == (n_events, n_patches)


def test_operator_restart_creates_no_duplicates(api, settings):
    api.put(train_body())
    Reconciler(api, settings).reconcile(api.body("ClassificationTrain", "resnet18"))
    # Status not yet written when the old operator died: the new one still finds the run by name.
    api.objects[("ClassificationTrain", "default", "resnet18")].pop("status")
    out = Reconciler(api, settings).reconcile(api.body("ClassificationTrain", "resnet18"))
    assert out.created == [] and len(api.of_kind("MPIJob")) == 1
    assert status(api)["mpiJobName"] == "resnet18-train-g1"


def test_status_follows_the_mpijob(api, rec):
    api.put(train_body())
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    api.set_mpijob_conditions("resnet18-train-g1", cond([("Created", "True"), ("Running", "True")]),
                              startTime="2026-01-01T00:00:00Z")
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    st = status(api)
    assert st["phase"] == "Running" and st["startTime"] == "2026-01-01T00:00:00Z"
    assert [c["type"] for c in st["conditions"]] == ["Created", "Running", "Reconciling", "Stalled", "Ready"]
    running_since = st["conditions"][1]["lastTransitionTime"]
    assert api.events[-1][1:3] == ("Normal", "MPIJobRunning")

    api.set_mpijob_conditions("resnet18-train-g1",
                              cond([("Created", "True"), ("Running", "False"), ("Succeeded", "True")]),
                              startTime="2026-01-01T00:00:00Z", completionTime="2026-01-01T02:00:00Z")
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    st = status(api)
    assert st["phase"] == "Succeeded" and st["completionTime"] == "2026-01-01T02:00:00Z"
    run = st["runHash"]
    assert st["outputPath"] == f"/results/runs/{run}/weights/resnet_012.tlt"
    assert st["output"] == {"claimName": "results", "subPath": "resnet18",
                            "relativePath": f"runs/{run}/weights/resnet_012.tlt"}
    assert st["conditions"][1]["status"] == "False" and st["conditions"][1]["lastTransitionTime"]
    assert running_since
    assert api.events[-1][1:3] == ("Normal", "MPIJobSucceeded")
    # No gate: the run is the promoted model, and Ready.
    assert st["promoted"]["runHash"] == run and st["promoted"]["outputPath"] == st["outputPath"]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"

    # A finished run is recorded: whatever its MPIJob says later (or its removal by the TTL), the result stands.
    api.set_mpijob_conditions("resnet18-train-g1", cond([("Created", "True"), ("Failed", "True")]))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert status(api)["phase"] == "Succeeded" and status(api)["outputPath"] == st["outputPath"]


def test_invalid_spec_text_creates_nothing_then_fixing_goes_on(api, rec):
    broken = TRAIN_SPEC.replace('n_layers: 18', 'n_layers: "eighteen"')
    api.put(train_body(experimentSpec=broken))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert api.creates == []
    st = status(api)
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec")
    assert ":3" in st["message"] and "n_layers" in st["message"]  # the loader's message, line 3
    assert st["conditions"][0]["type"] == "Failed" and st["conditions"][0]["reason"] == "InvalidSpec"
    assert api.events == [("resnet18", "Warning", "InvalidSpec", f"Failed: {st['message']}")]

    # Unchanged: no new event.
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert len(api.events) == 1

    api.put(train_body())  # fixed: generation 2
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert "MPIJob/resnet18-train-g2" in api.creates
    st = status(api)
    assert st["phase"] == "Pending" and st["observedGeneration"] == 2
    assert [(c["type"], c["status"], c["observedGeneration"]) for c in st["conditions"]] == [
        ("Reconciling", "True", 2), ("Stalled", "False", 2), ("Ready", "False", 2)]


@pytest.mark.parametrize("spec,needle", [
    ({"gpus": 6, "numProcesses": 4}, "must be a multiple of numProcesses"),
    ({"gpus": 8, "numProcesses": 4}, "model_parallelism needs 2 entries"),
    ({"experimentSpecRef": {"name": "cm"}}, "exactly one of experimentSpec or experimentSpecRef"),
    ({"resources": {"limits": {"nvidia.com/gpu": "1"}}}, "set by the operator"),
])
def test_cross_field_errors_are_invalid_spec(api, rec, spec, needle):
    api.put(train_body(**spec))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    st = status(api)
    assert st["reason"] == "InvalidSpec" and needle in st["message"]
    assert api.creates == [] and api.events[0][2] == "InvalidSpec"


def test_every_field_error_is_listed_in_status_condition_and_event_on_one_line(api, rec):
    """Like the MPI Operator's validation: all problems at once, each with its field path, '; '-joined."""
    body = train_body(gpus=6, numProcesses=4, backoffLimit=-1, resources={"limits": {"nvidia.com/gpu": "2"}})
    body["spec"]["volumes"]["data"]["subPath"] = "../x"
    api.put(body)
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    expected = "; ".join([
        "spec.numProcesses: Invalid value: 4: gpus must be a multiple of numProcesses: gpus 6, numProcesses 4",
        'spec.volumes.data.subPath: Invalid value: "../x": must be a relative path without \'..\'',
        'spec.resources: Invalid value: "object": nvidia.com/gpu is set by the operator from spec.gpus',
        "spec.backoffLimit: Invalid value: -1: must be >= 0",
    ])
    st = status(api)
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec") and api.creates == []
    assert st["message"] == f"{expected} (fix the resource; the next edit is checked again)"
    assert st["conditions"][0]["message"] == st["message"]
    assert api.events == [("resnet18", "Warning", "InvalidSpec", f"Failed: {st['message']}")]
    assert "\n" not in st["message"]


def test_spec_change_restarts_the_run_once_the_old_pods_are_gone(api, rec):
    api.put(train_body())
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    api.set_mpijob_conditions("resnet18-train-g1", cond([("Created", "True"), ("Running", "True")]))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    api.patch_status("", "ClassificationTrain", "default", "resnet18", "",
                     {"progress": {"epoch": 3, "run": "resnet18-train-g1"}})
    put_run_pod(api, "resnet18-train-g1", "worker-0")

    api.put(train_body(useAmp=True))  # GitOps edit: generation 2
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    # The old run is stopped, and nothing new starts while its pod still writes to the results volume.
    assert out.deleted == ["MPIJob/resnet18-train-g1", "PodDisruptionBudget/resnet18-train-g1"]
    assert out.created == [] and api.of_kind("MPIJob") == [] and api.of_kind("PodDisruptionBudget") == []
    assert ("resnet18", "Normal", "SpecChanged") in [e[:3] for e in api.events]
    st = status(api)
    assert (st["phase"], st["reason"], st["observedGeneration"]) == ("Pending", "WaitingForOldRun", 2)
    assert "1 pod(s)" in st["message"] and out.requeue_after
    assert rec.reconcile(api.body("ClassificationTrain", "resnet18")).created == []

    api.delete("v1", "Pod", "default", "resnet18-train-g1-worker-0")  # the garbage collector's work
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert "MPIJob/resnet18-train-g2" in out.created and out.deleted == ["ConfigMap/resnet18-train-g1-spec"]
    st = status(api)
    assert st["mpiJobName"] == "resnet18-train-g2" and st["observedGeneration"] == 2 and st["phase"] == "Pending"
    assert "progress" not in st and "startTime" not in st
    # The RBAC objects are per resource, not per run: kept, not recreated.
    assert len(api.of_kind("Role")) == 1 and "Role/resnet18-train-kestrel-status" not in out.created


def test_an_operator_killed_right_after_stopping_the_old_run_still_leaves_its_event(api, rec, settings):
    """The operator can die between its two requests (the e2e killed it right after a GitOps edit): the user
    must still see SpecChanged, from it or from its successor, never a run stopped in silence."""
    api.put(train_body())
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    api.put(train_body(useAmp=True))
    delete = api.delete

    def delete_then_die(*args, **kwargs):
        delete(*args, **kwargs)
        raise SystemExit("SIGKILL")

    api.delete = delete_then_die
    with pytest.raises(SystemExit):
        rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    api.delete = delete
    Reconciler(api, settings).reconcile(api.body("ClassificationTrain", "resnet18"))  # the restarted operator
    assert api.of_kind("MPIJob") == [] or api.of_kind("MPIJob")[0]["metadata"]["name"].endswith("-g2")
    assert "SpecChanged" in [e[2] for e in api.events]


def test_name_conflict_is_reported_not_overwritten(api, rec):
    api.put({"apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob", "metadata": {"name": "resnet18-train-g1"},
             "spec": {"foreign": True}})
    api.put(train_body())
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert status(api)["reason"] == "NameConflict"
    assert api.body("MPIJob", "resnet18-train-g1")["spec"] == {"foreign": True}


def test_prune_waits_for_its_train_then_runs(api, rec):
    api.put(prune_body())
    rec.reconcile(api.body("ClassificationPrune", "pruned"))
    assert status(api, "ClassificationPrune", "pruned")["reason"] == "WaitingForModel" and api.creates == []

    api.put(train_body())
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    rec.reconcile(api.body("ClassificationPrune", "pruned"))
    assert status(api, "ClassificationPrune", "pruned")["reason"] == "WaitingForModel"

    api.set_mpijob_conditions("resnet18-train-g1", cond([("Succeeded", "True")]))
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    waiting = rec.dependents(api.body("ClassificationTrain", "resnet18"))
    assert [w["metadata"]["name"] for w in waiting] == ["pruned"]
    rec.reconcile(waiting[0])
    job = api.body("MPIJob", "pruned-prune-g1")
    train_run = status(api)["runHash"]
    # The train's promoted model, in its run's folder, through the train's results volume mounted read-only.
    assert job["metadata"]["annotations"]["kestrel.dev/input-model"] == (
        f"/kestrel/model-source/runs/{train_run}/weights/resnet_012.tlt")
    assert status(api, "ClassificationPrune", "pruned")["inputModelPath"].endswith("resnet_012.tlt")


def test_failed_upstream_is_reported(api, rec):
    api.put(train_body())
    api.patch_status("", "ClassificationTrain", "default", "resnet18", "",
                     {"phase": "Failed", "reason": "InvalidSpec", "message": "bad", "observedGeneration": 1})
    api.put(prune_body())
    rec.reconcile(api.body("ClassificationPrune", "pruned"))
    st = status(api, "ClassificationPrune", "pruned")
    assert st["reason"] == "ModelSourceFailed" and api.events[-1][1] == "Warning"


def test_spec_configmap_missing_then_present(api, rec):
    body = train_body(experimentSpecRef={"name": "specs", "key": "resnet.txt"})
    del body["spec"]["experimentSpec"]
    api.put(body)
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert status(api)["reason"] == "SpecNotFound" and api.events[-1][1] == "Warning"
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "specs"},
             "data": {"resnet.txt": TRAIN_SPEC}})
    rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert api.body("ConfigMap", "resnet18-train-g1-spec")["data"]["spec.txt"] == TRAIN_SPEC


def test_deleting_resource_is_left_to_the_garbage_collector(api, rec):
    body = train_body()
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    api.put(body)
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"))
    assert out.created == [] and api.status_patches == []


# -- the kopf layer: handlers called as kopf would call them --------------------------------------
@pytest.fixture
def wired(api, rec, monkeypatch):
    ctl = kopf_handlers.Controller(rec)
    monkeypatch.setitem(kopf_handlers._state, "controller", ctl)
    return api, ctl


def test_kopf_resource_event_handler(wired):
    api, ctl = wired
    api.put(train_body())
    body = kopf.Body(api.body("ClassificationTrain", "resnet18"))
    asyncio.run(kopf_handlers.on_resource_event(type=None, body=body, logger=logging.getLogger("t")))
    asyncio.run(kopf_handlers.on_resource_event(type="MODIFIED", body=body))
    assert ctl.queue.run_ready() == 1  # two events, one pass
    assert "MPIJob/resnet18-train-g1" in api.creates
    asyncio.run(kopf_handlers.on_resource_event(type="DELETED", body=body))
    assert ctl.queue.run_ready() == 0 and len(api.of_kind("MPIJob")) == 1


def test_kopf_mpijob_event_mirrors_owner_and_wakes_dependents(wired):
    api, ctl = wired
    api.put(train_body())
    api.put(prune_body())
    asyncio.run(kopf_handlers.on_resource_event(type="ADDED", body=kopf.Body(api.body("ClassificationTrain",
                                                                                      "resnet18"))))
    ctl.queue.run_ready()
    api.set_mpijob_conditions("resnet18-train-g1", cond([("Succeeded", "True")]))
    asyncio.run(kopf_handlers.on_mpijob_event(type="MODIFIED", body=kopf.Body(api.body("MPIJob",
                                                                                      "resnet18-train-g1"))))
    ctl.queue.run_ready()
    assert status(api)["phase"] == "Succeeded"
    assert "MPIJob/pruned-prune-g1" in api.creates  # the waiting prune was reconciled right away


def test_an_edited_spec_configmap_wakes_the_resource_that_reads_it(wired):
    """GitOps with the spec text in a ConfigMap: its edit is a new run at once, not at the next resync."""
    api, ctl = wired
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "specs"}, "data": {"spec.txt": TRAIN_SPEC}})
    body = train_body(experimentSpecRef={"name": "specs"})
    del body["spec"]["experimentSpec"]
    api.put(body)
    asyncio.run(kopf_handlers.on_resource_event(type="ADDED", body=kopf.Body(api.body("ClassificationTrain",
                                                                                      "resnet18"))))
    ctl.queue.run_ready()
    first = status(api)["runHash"]
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "specs"},
             "data": {"spec.txt": TRAIN_SPEC.replace("n_epochs: 12", "n_epochs: 14")}})
    asyncio.run(kopf_handlers.on_configmap_event(type="MODIFIED", body=kopf.Body(api.body("ConfigMap", "specs"))))
    assert ctl.queue.run_ready() == 1
    assert "MPIJob/resnet18-train-g1" in api.deletes  # the old text's run stops; the new text's run follows
    asyncio.run(kopf_handlers.on_configmap_event(type="MODIFIED", body=kopf.Body(api.body("ConfigMap", "specs"))))
    ctl.queue.run_ready()
    assert status(api)["runHash"] not in (None, first)


def test_kopf_registry_watches_kinds_mpijobs_pods_configmaps_without_finalizers():
    registry = kopf.get_default_registry()
    selectors = {h.selector.any_name or h.selector.plural for h in registry._watching._handlers}
    assert {"classificationtrains", "classificationprunes", "classificationexports", "mpijobs", "pods",
            "configmaps"} <= selectors
    # Timers, daemons and deletion handlers would put a finalizer on every resource, blocking deletion
    # whenever the operator is down: there must be none.
    assert registry._spawning._handlers == [] and registry._changing._handlers == []
