"""GitOps retraining against the in-memory API: one folder per run, a revert takes the old run back with no pod,
the promotion gate, dependents that follow only the promoted model, keepRuns, the TTL, and the conditions
kstatus and Argo CD read (Reconciling, Stalled, Ready)."""

from __future__ import annotations

import pytest

from kestrel_operator.manifests import plan_run
from kestrel_operator.resources import parse_resource
from kestrel_operator.settings import Settings
from tests.operator.conftest import TRAIN_SPEC, prune_body, train_body

TRAIN = "ClassificationTrain"
MORE_EPOCHS = TRAIN_SPEC.replace("n_epochs: 12", "n_epochs: 20")
NEW_DATA = TRAIN_SPEC.replace("/data/train", "/data/train-2027")


def status(api, kind=TRAIN, name="resnet18"):
    return api.body(kind, name).get("status") or {}


def conditions(api, kind=TRAIN, name="resnet18"):
    return {c["type"]: c for c in status(api, kind, name).get("conditions") or []}


def launcher(api, job):
    return api.body("MPIJob", job)["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]


def trainer_args(api, job):
    c = launcher(api, job)["containers"][0]
    return [c["command"][0], *c.get("args", [])]


def results_dir(api, job):
    args = trainer_args(api, job)
    return args[args.index("-r") + 1]


def apply(api, rec, body):
    """kubectl apply, then one reconcile pass (what the watch event triggers)."""
    api.put(body)
    return rec.reconcile(api.body(body["kind"], body["metadata"]["name"]))


def succeed(api, rec, job, top1=None, kind=TRAIN, name="resnet18"):
    """The run's trainer reports its end-of-run evaluation (rank 0 patches status.progress), then the MPIJob
    succeeds; one reconcile pass."""
    if top1 is not None:
        api.patch_status("", kind, "default", name, "", {"progress": {
            "epoch": 12, "maxEpoch": 12, "top1Accuracy": top1, "topKAccuracy": min(1.0, top1 + 0.05), "topK": 3,
            "run": job}})
    api.set_mpijob_conditions(job, [{"type": "Created", "status": "True"}, {"type": "Succeeded", "status": "True",
                                                                          "reason": "MPIJobSucceeded"}],
                              startTime="2026-12-01T00:00:00Z", completionTime="2026-12-01T01:00:00Z")
    return rec.reconcile(api.body(kind, name))


def test_a_spec_edit_trains_from_scratch_in_a_new_folder_and_keeps_the_old_runs_files(api, rec):
    """The stale-model defect: today's operator gave every generation the same results folder, so the edited
    spec's run resumed the old run's newest checkpoint (or found all epochs done and ended Succeeded with the old
    model)."""
    apply(api, rec, train_body())
    folder_a = results_dir(api, "resnet18-train-g1")
    succeed(api, rec, "resnet18-train-g1")
    run_a = status(api)["runHash"]
    assert folder_a == f"/results/runs/{run_a}"

    apply(api, rec, train_body(experimentSpec=MORE_EPOCHS))
    assert "MPIJob/resnet18-train-g1" in api.deletes  # the old run's pods go; its folder is not touched
    rec.reconcile(api.body(TRAIN, "resnet18"))
    folder_b = results_dir(api, "resnet18-train-g2")
    assert folder_b != folder_a and folder_b.startswith("/results/runs/")
    st = status(api)
    assert st["runHash"] == folder_b.rsplit("/", 1)[1] and st["runPath"] == folder_b
    # While B trains, A is still the promoted model, and both are in the history.
    assert st["promoted"]["runHash"] == run_a
    assert [r["runHash"] for r in st["runs"]] == [st["runHash"], run_a]
    assert (st["phase"], conditions(api)["Ready"]["status"]) == ("Pending", "False")


def test_the_same_spec_always_maps_to_the_same_folder(api, rec, settings):
    """Resuming inside one run: the folder is a function of the spec, not of the generation or the operator."""
    body = train_body()
    body["metadata"].update(uid="u-1", generation=1)
    first = plan_run(parse_resource(body, settings), TRAIN_SPEC).resource.meta.run_hash
    body["metadata"]["generation"] = 7
    assert plan_run(parse_resource(body, settings), TRAIN_SPEC).resource.meta.run_hash == first
    other = train_body(name="resnet18-b")
    other["metadata"].update(uid="u-2", generation=1)
    other["spec"]["volumes"]["results"]["subPath"] = "resnet18"  # same volume folder, another resource
    assert plan_run(parse_resource(other, settings), TRAIN_SPEC).resource.meta.run_hash != first
    # Fields a run takes in place, and the history fields, do not change the run.
    edited = train_body(suspend=True, keepRuns=7, ttlSecondsAfterFinished=60,
                        promotion={"metric": "top1", "minimum": 0.5})
    gated = train_body(promotion={"metric": "top1", "minimum": 0.9})
    assert parse_resource(edited, settings).meta.spec_hash == parse_resource(gated, settings).meta.spec_hash
    # ... but whether the run evaluates at its end does (its command differs).
    assert parse_resource(gated, settings).meta.spec_hash != parse_resource(train_body(), settings).meta.spec_hash


def test_a_revert_takes_the_succeeded_run_back_with_no_new_pod(api, rec):
    apply(api, rec, train_body())
    succeed(api, rec, "resnet18-train-g1")
    run_a = status(api)["runHash"]
    output_a = status(api)["outputPath"]

    apply(api, rec, train_body(experimentSpec=NEW_DATA))
    rec.reconcile(api.body(TRAIN, "resnet18"))
    succeed(api, rec, "resnet18-train-g2")
    run_b = status(api)["runHash"]
    assert status(api)["promoted"]["runHash"] == run_b  # no gate: every successful run is promoted

    creates = list(api.creates)
    out = apply(api, rec, train_body())  # git revert: generation 3 has generation 1's spec
    assert api.creates == creates  # nothing created: no MPIJob, no pod
    st = status(api)
    assert (st["phase"], st["reason"], st["observedGeneration"]) == ("Succeeded", "RunReused", 3)
    assert st["runHash"] == run_a and st["outputPath"] == output_a and run_a in st["message"]
    assert st["promoted"]["runHash"] == run_a and out.promoted  # dependents follow the rollback
    assert conditions(api)["Ready"]["status"] == "True" and conditions(api)["Stalled"]["status"] == "False"
    assert ("resnet18", "Normal", "RunReused") in [e[:3] for e in api.events]
    # Unchanged afterwards: no status write, no event.
    n_patches, n_events = len(api.status_patches), len(api.events)
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert (len(api.status_patches), len(api.events)) == (n_patches, n_events)


def test_a_finished_run_whose_mpijob_the_ttl_removed_keeps_its_result(api, rec):
    apply(api, rec, train_body())
    assert api.body("MPIJob", "resnet18-train-g1")["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 3600
    succeed(api, rec, "resnet18-train-g1")
    before = status(api)
    api.delete("", "MPIJob", "default", "resnet18-train-g1")  # the MPI Operator, ttlSecondsAfterFinished later
    creates, n_patches = list(api.creates), len(api.status_patches)
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert api.creates == creates and len(api.status_patches) == n_patches
    assert status(api) == before

    # An in-place edit (suspend) afterwards moves observedGeneration (kstatus waits for it) and starts nothing.
    apply(api, rec, train_body(suspend=True))
    assert api.creates == creates
    assert (status(api)["observedGeneration"], status(api)["phase"]) == (2, "Succeeded")
    assert all(c["observedGeneration"] == 2 for c in status(api)["conditions"])


def test_ttl_comes_from_the_resource_or_the_operator_and_changes_in_place(api, settings):
    from kestrel_operator.handlers.reconcile import Reconciler

    rec = Reconciler(api, Settings(default_image="kestrel-trainer:test", run_ttl_seconds=None))
    apply(api, rec, train_body())
    assert "ttlSecondsAfterFinished" not in api.body("MPIJob", "resnet18-train-g1")["spec"]["runPolicy"]
    apply(api, rec, train_body(ttlSecondsAfterFinished=120))
    assert api.body("MPIJob", "resnet18-train-g1")["spec"]["runPolicy"]["ttlSecondsAfterFinished"] == 120
    assert api.creates.count("MPIJob/resnet18-train-g1") == 1 and not api.deletes  # no restart


def test_the_gate_rejects_a_worse_model_and_dependents_keep_the_promoted_one(api, rec):
    gate = {"metric": "top1", "minimum": 0.80, "maxDrop": 0.01}
    apply(api, rec, train_body(promotion=gate))
    assert trainer_args(api, "resnet18-train-g1")[-1] == "--evaluate"
    succeed(api, rec, "resnet18-train-g1", top1=0.85)
    run_a = status(api)["runHash"]
    assert status(api)["reason"] == "Promoted" and status(api)["promoted"]["evaluation"]["top1Accuracy"] == 0.85
    assert conditions(api)["Promoted"]["status"] == "True" and conditions(api)["Ready"]["status"] == "True"

    apply(api, rec, prune_body())
    job = api.body("MPIJob", "pruned-prune-g1")
    assert f"/runs/{run_a}/weights/" in job["metadata"]["annotations"]["kestrel.dev/input-model"]
    succeed(api, rec, "pruned-prune-g1", kind="ClassificationPrune", name="pruned")
    pruned_run = status(api, "ClassificationPrune", "pruned")["runHash"]

    apply(api, rec, train_body(promotion=gate, experimentSpec=NEW_DATA))
    rec.reconcile(api.body(TRAIN, "resnet18"))
    out = succeed(api, rec, "resnet18-train-g2", top1=0.83)  # >= 0.80, but below 0.85 - 0.01
    st = status(api)
    assert (st["phase"], st["reason"]) == ("Succeeded", "PromotionRejected")
    assert "0.8300" in st["message"] and "0.8500" in st["message"] and "0.0100" in st["message"]
    assert st["promoted"]["runHash"] == run_a and not out.promoted
    c = conditions(api)
    assert (c["Promoted"]["status"], c["Ready"]["status"], c["Stalled"]["status"], c["Reconciling"]["status"]) == (
        "False", "False", "True", "False")
    assert c["Promoted"]["message"] == st["message"]
    assert ("resnet18", "Warning", "PromotionRejected") in [e[:3] for e in api.events]

    creates = list(api.creates)
    rec.reconcile(api.body("ClassificationPrune", "pruned"))  # a resync: the prune's input did not change
    assert api.creates == creates
    assert status(api, "ClassificationPrune", "pruned")["runHash"] == pruned_run


def test_a_promoted_model_reruns_its_dependents_in_new_folders(api, rec):
    gate = {"metric": "topK", "maxDrop": 0.0}
    apply(api, rec, train_body(promotion=gate))
    succeed(api, rec, "resnet18-train-g1", top1=0.70)  # topK 0.75
    apply(api, rec, prune_body())
    succeed(api, rec, "pruned-prune-g1", kind="ClassificationPrune", name="pruned")
    pruned_a = status(api, "ClassificationPrune", "pruned")

    apply(api, rec, train_body(promotion=gate, experimentSpec=MORE_EPOCHS))
    rec.reconcile(api.body(TRAIN, "resnet18"))
    out = succeed(api, rec, "resnet18-train-g2", top1=0.80)  # topK 0.85 >= 0.75
    run_b = status(api)["runHash"]
    assert status(api)["promoted"]["runHash"] == run_b and out.promoted
    assert "top-3 accuracy 0.8500" in status(api)["message"]
    assert [d["metadata"]["name"] for d in rec.dependents(api.body(TRAIN, "resnet18"))] == ["pruned"]

    rec.reconcile(api.body("ClassificationPrune", "pruned"))  # stops nothing left, then starts on B's model
    rec.reconcile(api.body("ClassificationPrune", "pruned"))
    st = status(api, "ClassificationPrune", "pruned")
    assert st["runHash"] != pruned_a["runHash"] and st["phase"] == "Pending"
    job = api.body("MPIJob", "pruned-prune-g1")
    assert f"/runs/{run_b}/weights/" in job["metadata"]["annotations"]["kestrel.dev/input-model"]
    args = trainer_args(api, "pruned-prune-g1")
    assert args[args.index("-o") + 1] == f"/results/runs/{st['runHash']}/pruned/pruned.tlt"
    # The prune's earlier result stays promoted until its new run succeeds.
    assert st["promoted"]["runHash"] == pruned_a["runHash"]


def test_a_run_whose_evaluation_never_reached_the_status_is_not_promoted(api, rec):
    apply(api, rec, train_body(promotion={"minimum": 0.5}))
    succeed(api, rec, "resnet18-train-g1")  # no progress report
    st = status(api)
    assert (st["phase"], st["reason"]) == ("Succeeded", "EvaluationMissing")
    assert "promoted" not in st and "no model is promoted yet" in st["message"]
    assert conditions(api)["Stalled"]["status"] == "True"
    apply(api, rec, prune_body())
    assert status(api, "ClassificationPrune", "pruned")["reason"] == "WaitingForModel"


@pytest.mark.parametrize("keep", [0, 1])
def test_keep_runs_drops_the_oldest_runs_and_the_next_launcher_removes_their_folders(api, rec, keep):
    specs = [TRAIN_SPEC.replace("n_epochs: 12", f"n_epochs: {n}") for n in (12, 13, 14, 15)]
    runs = []
    for gen, text in enumerate(specs, start=1):
        apply(api, rec, train_body(experimentSpec=text, keepRuns=keep))
        rec.reconcile(api.body(TRAIN, "resnet18"))
        runs.append(status(api)["runHash"])
        if gen == 1:
            succeed(api, rec, "resnet18-train-g1")  # A: the promoted run, kept whatever keepRuns says
    # Runs B and C never finished (each stopped by the next edit). At D's start the history keeps D (current),
    # A (promoted) and the `keep` newest others.
    a, b, c, d = runs
    kept = [r["runHash"] for r in status(api)["runs"]]
    assert kept == ([d, c, a] if keep else [d, a])
    # D's launcher removes what D's start dropped (C with keepRuns 0, B with 1); C's launcher removed B already.
    init = launcher(api, "resnet18-train-g4")["initContainers"]
    assert [x["name"] for x in init] == ["remove-old-runs"]
    assert init[0]["command"] == ["kestrel", "runs", "remove", f"/results/runs/{c if keep == 0 else b}"]
    assert [m["mountPath"] for m in init[0]["volumeMounts"]] == ["/results"]
    assert init[0]["securityContext"]["runAsNonRoot"] is True
    removed = " ".join(e[3] for e in api.events if e[2] == "OldRunsRemoved")
    assert all(f"/results/runs/{h}" in removed for h in ([b, c] if keep == 0 else [b]))
    assert f"/results/runs/{a}" not in removed


def test_conditions_follow_kstatus(api, rec):
    """Reconciling while a run of this generation is pending or running, Stalled when it failed, every condition
    stamped with the generation it describes."""
    apply(api, rec, train_body(retryLimit=0))
    c = conditions(api)
    assert (c["Reconciling"]["status"], c["Stalled"]["status"], c["Ready"]["status"]) == ("True", "False", "False")
    api.set_mpijob_conditions("resnet18-train-g1", [{"type": "Running", "status": "True"}])
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert conditions(api)["Reconciling"]["status"] == "True"
    api.set_mpijob_conditions("resnet18-train-g1", [{"type": "Failed", "status": "True", "reason": "MPIJobFailed",
                                                     "message": "launcher failed"}])
    rec.reconcile(api.body(TRAIN, "resnet18"))
    c = conditions(api)
    assert (c["Reconciling"]["status"], c["Stalled"]["status"], c["Ready"]["status"]) == ("False", "True", "False")
    assert {x["observedGeneration"] for x in status(api)["conditions"]} == {1}

    apply(api, rec, train_body(retryLimit=0, experimentSpec='model_config { arch: "nope" }'))
    rec.reconcile(api.body(TRAIN, "resnet18"))  # once the old run's MPIJob is gone
    c = conditions(api)
    assert (c["Stalled"]["status"], c["Stalled"]["reason"]) == ("True", "InvalidSpec")


def test_a_spec_text_from_a_configmap_is_part_of_the_run(api, rec):
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "spec"}, "data": {"spec.txt": TRAIN_SPEC}})
    body = train_body(experimentSpecRef={"name": "spec"})
    del body["spec"]["experimentSpec"]
    apply(api, rec, body)
    run_a = status(api)["runHash"]
    # The ConfigMap is deleted while the run trains: the run goes on (it has its copy of the text).
    del api.objects[("ConfigMap", "default", "spec")]
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert status(api)["runHash"] == run_a and "MPIJob/resnet18-train-g1" not in api.deletes
    # New text under the same name: another run, in another folder.
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "spec"}, "data": {"spec.txt": NEW_DATA}})
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert "MPIJob/resnet18-train-g1" in api.deletes
    rec.reconcile(api.body(TRAIN, "resnet18"))
    assert status(api)["runHash"] not in (None, run_a)


def test_a_finished_run_keeps_its_result_when_its_upstream_goes_away(api, rec):
    apply(api, rec, train_body())
    succeed(api, rec, "resnet18-train-g1")
    apply(api, rec, prune_body())
    succeed(api, rec, "pruned-prune-g1", kind="ClassificationPrune", name="pruned")
    done = status(api, "ClassificationPrune", "pruned")
    del api.objects[(TRAIN, "default", "resnet18")]
    api.delete("", "MPIJob", "default", "pruned-prune-g1")  # and its TTL passed
    rec.reconcile(api.body("ClassificationPrune", "pruned"))
    after = status(api, "ClassificationPrune", "pruned")
    assert (after["phase"], after["runHash"], after["outputPath"]) == ("Succeeded", done["runHash"], done["outputPath"])
    # An edit of the prune now cannot start (no upstream model): it waits, and says why.
    apply(api, rec, prune_body(pruningThreshold=0.5))
    assert status(api, "ClassificationPrune", "pruned")["reason"] == "WaitingForModel"


def test_a_refused_run_is_judged_again_when_the_gate_changes(api, rec):
    """Lowering a threshold is how a team accepts a model the gate refused: no new run, the run is promoted."""
    apply(api, rec, train_body(promotion={"minimum": 0.9}))
    succeed(api, rec, "resnet18-train-g1", top1=0.88)
    run = status(api)["runHash"]
    assert status(api)["reason"] == "PromotionRejected" and "promoted" not in status(api)
    creates = list(api.creates)
    out = apply(api, rec, train_body(promotion={"minimum": 0.85}))
    st = status(api)
    assert api.creates == creates and st["runHash"] == run
    assert (st["reason"], st["promoted"]["runHash"], st["observedGeneration"]) == ("Promoted", run, 2)
    assert "judged again" in st["message"] and "0.8800" in st["message"] and out.promoted
    assert conditions(api)["Ready"]["status"] == "True" and conditions(api)["Promoted"]["status"] == "True"
    # Raising it again does not demote a promoted model (a gate judges runs, it does not retire models).
    apply(api, rec, train_body(promotion={"minimum": 0.95}))
    assert status(api)["promoted"]["runHash"] == run and status(api)["reason"] == "Promoted"
