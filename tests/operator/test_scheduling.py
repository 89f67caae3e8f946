"""Queueing and gang scheduling passthrough: what the MPIJob and its pod templates carry, written out by hand
from the MPIJob v2beta1 API (runPolicy.suspend, runPolicy.schedulingPolicy), Kueue's job label and core/v1
PodSpec fields; plus the operator's refusals, and schema validity of the result."""

from __future__ import annotations

import dataclasses

import pytest

from kestrel_operator.manifests import plan_run
from kestrel_operator.resources import InvalidSpec, parse_resource
from tests.operator.conftest import train_body
from tests.operator.test_manifests import assert_valid, by_kind, plan_for, templates

AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "gpu.product", "operator": "In", "values": ["A100", "H100"]}]}]}}}


def test_queueing_and_scheduling_fields_reach_the_mpijob_and_every_pod(settings):
    body = train_body(
        gpus=16, suspend=True, queueName="team-a", schedulerName="volcano", runtimeClassName="nvidia",
        schedulingPolicy={"minAvailable": 3, "queue": "gpu", "priorityClass": "high", "scheduleTimeoutSeconds": 600},
        labels={"team": "vision"}, annotations={"example.com/cost-center": "42"},
        env=[{"name": "NCCL_DEBUG", "value": "WARN"}, {"name": "NCCL_IB_DISABLE", "value": "1"},
             {"name": "HTTPS_PROXY", "valueFrom": {"configMapKeyRef": {"name": "proxy", "key": "url"}}}],
        affinity=AFFINITY, launcherResources={"limits": {"memory": "1Gi"}},
    )
    plan = plan_for(body, settings)
    assert_valid(plan)
    job = by_kind(plan, "MPIJob")[0]
    policy = job["spec"]["runPolicy"]
    assert policy["suspend"] is True
    assert policy["schedulingPolicy"] == {"minAvailable": 3, "queue": "gpu", "priorityClass": "high",
                                          "scheduleTimeoutSeconds": 600}
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["metadata"]["labels"]["team"] == "vision"
    assert job["metadata"]["annotations"]["example.com/cost-center"] == "42"
    assert "kestrel.dev/output" in job["metadata"]["annotations"]
    for role, replica in job["spec"]["mpiReplicaSpecs"].items():
        template = replica["template"]
        spec = template["spec"]
        assert (spec["schedulerName"], spec["runtimeClassName"]) == ("volcano", "nvidia")
        # The user's node affinity on every pod; the workers add their spread over nodes (no podAntiAffinity given).
        assert spec["affinity"]["nodeAffinity"] == AFFINITY["nodeAffinity"]
        assert ("podAntiAffinity" in spec["affinity"]) == (role == "Worker"), role
        assert template["metadata"]["labels"]["team"] == "vision"
        assert template["metadata"]["annotations"] == {"example.com/cost-center": "42"}
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["NCCL_DEBUG"] == {"name": "NCCL_DEBUG", "value": "WARN"}
        assert env["HTTPS_PROXY"]["valueFrom"] == {"configMapKeyRef": {"name": "proxy", "key": "url"}}
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    args = launcher["args"]
    # Every rank gets the user's variables (sshd on the workers starts ranks with a clean environment).
    for name in ("NCCL_DEBUG", "NCCL_IB_DISABLE", "HTTPS_PROXY"):
        assert args[args.index(name) - 1] == "-x"
    assert "NCCL_DEBUG=INFO" not in args  # the user's value wins over our default
    # An mpirun-only launcher has limits, so a namespace whose ResourceQuota demands them admits it.
    assert launcher["resources"] == {"requests": {"cpu": "250m", "memory": "256Mi"},
                                     "limits": {"cpu": "1", "memory": "1Gi"}}


def test_defaults_add_nothing(settings):
    job = by_kind(plan_for(train_body(), settings), "MPIJob")[0]
    assert "suspend" not in job["spec"]["runPolicy"] and "schedulingPolicy" not in job["spec"]["runPolicy"]
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    spec = templates(job)[0]["spec"]
    assert not {"schedulerName", "runtimeClassName", "affinity"} & set(spec)


def test_single_rank_launcher_uses_the_users_resources_not_the_mpirun_defaults(settings):
    job = by_kind(plan_for(train_body(resources={"limits": {"cpu": "4", "memory": "16Gi"}}), settings), "MPIJob")[0]
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    assert launcher["resources"] == {"limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}}


@pytest.mark.parametrize("spec,field", [
    ({"labels": {"kestrel.dev/generation": "9"}}, "spec.labels"),
    ({"labels": {"app.kubernetes.io/managed-by": "me"}}, "spec.labels"),
    ({"labels": {"team": "has space"}}, "spec.labels"),
    ({"env": [{"name": "KESTREL_KEY", "value": "leak"}]}, "spec.env[0]"),
    ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "spec.env[1]"),
    ({"env": [{"name": "A", "value": 1}]}, "spec.env[0]"),
    ({"env": [{"name": "A"}]}, "spec.env[0]"),
    ({"affinity": {"nodeSelector": {}}}, "spec.affinity"),
    ({"schedulingPolicy": {"minAvailable": 0}}, "spec.schedulingPolicy.minAvailable"),
    ({"queueName": "Team A"}, "spec.queueName"),
    ({"launcherResources": {"limits": {"nvidia.com/gpu": "1"}}}, "spec.launcherResources"),
])
def test_bad_passthrough_values_name_the_field(settings, spec, field):
    with pytest.raises(InvalidSpec) as err:
        parse_resource(train_body(**spec), settings)
    assert err.value.field == field, err.value.message


def test_run_hash_ignores_only_in_place_fields(settings):
    base = parse_resource(train_body(), settings).meta.run_hash
    same = train_body(suspend=True, activeDeadlineSeconds=60, tolerations=[{"key": "k", "operator": "Exists"}])
    assert parse_resource(same, settings).meta.run_hash == base
    for other in (train_body(useAmp=True), train_body(env=[{"name": "NCCL_DEBUG", "value": "WARN"}]),
                  train_body(queueName="q")):
        assert parse_resource(other, settings).meta.run_hash != base


def test_kueues_own_queue_label_on_the_resource_queues_it_like_spec_queue_name(settings):
    """Kueue's convention for every job kind (and what GitOps repositories carry): metadata.labels
    kueue.x-k8s.io/queue-name. The MPIJob gets the label and is created suspended, so nothing runs before Kueue
    admits it."""
    body = train_body()
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    job = plan_run(parse_resource(body, settings), body["spec"]["experimentSpec"]).objects[-1]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["runPolicy"]["suspend"] is True
    both = train_body(queueName="team-b")
    both["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    with pytest.raises(InvalidSpec, match=r"spec.queueName: .*differs from metadata.labels"):
        parse_resource(both, settings)


def _held_by_kueue(api, rec, created="2030-01-01T00:00:00Z"):
    """A queued train whose MPIJob exists and is suspended, as the MPI Operator reports a suspended MPIJob."""
    body = train_body()
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a"}
    api.put(body)
    rec.reconcile(api.body("ClassificationTrain", "resnet18"), now=created)
    api.objects[("MPIJob", "default", "resnet18-train-g1")]["metadata"]["creationTimestamp"] = created
    api.set_mpijob_conditions("resnet18-train-g1", [
        {"type": "Created", "status": "True", "reason": "MPIJobCreated"},
        {"type": "Suspended", "status": "True", "reason": "MPIJobSuspended", "message": "MPIJob suspended"}])
    return api.body("MPIJob", "resnet18-train-g1")


def _workload(api, job, conditions):
    """Kueue's Workload of `job`: named after it, labelled with its uid (Kueue v0.17 jobframework)."""
    return api.put({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
                    "metadata": {"name": f"mpijob-{job['metadata']['name']}-1a2b3",
                                 "labels": {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]}},
                    "status": {"conditions": conditions}})


PENDING = {"type": "QuotaReserved", "status": "False", "reason": "Pending",
           "message": "couldn't assign flavors to pod set launcher: insufficient unused quota for cpu in flavor "
                      "default, 50m more needed"}
PREEMPTED = {"type": "Evicted", "status": "True", "reason": "Preempted",
             "message": "Preempted to accommodate a workload (UID: u1, JobUID: u2) due to prioritization in the "
                        "ClusterQueue"}


def test_a_run_kueue_holds_shows_kueues_own_reason(api, rec):
    """Suspended/Queued, and the message says what Kueue says about the Workload: no quota now, and a preemption."""
    job = _held_by_kueue(api, rec)
    _workload(api, job, [PENDING])
    rec.reconcile(api.body("ClassificationTrain", "resnet18"), now="2030-01-01T00:00:05Z")
    st = api.body("ClassificationTrain", "resnet18")["status"]
    assert (st["phase"], st["reason"]) == ("Suspended", "Queued")
    assert st["message"] == ("queued in Kueue LocalQueue team-a: couldn't assign flavors to pod set launcher: "
                             "insufficient unused quota for cpu in flavor default, 50m more needed (Workload "
                             "mpijob-resnet18-train-g1-1a2b3); the run starts when Kueue admits it")
    _workload(api, job, [PREEMPTED, PENDING])
    rec.reconcile(api.body("ClassificationTrain", "resnet18"), now="2030-01-01T00:10:00Z")
    message = api.body("ClassificationTrain", "resnet18")["status"]["message"]
    assert "Preempted to accommodate a workload (UID: u1, JobUID: u2) due to prioritization in the ClusterQueue; " \
           "couldn't assign flavors" in message


def test_until_kueue_says_why_the_pass_comes_back_soon_then_the_resync_is_enough(api, rec):
    job = _held_by_kueue(api, rec)
    out = rec.reconcile(api.body("ClassificationTrain", "resnet18"), now="2030-01-01T00:00:02Z")
    assert out.requeue_after == 3.0  # no Workload yet: Kueue creates it within seconds of the MPIJob
    assert "kubectl get workloads" in api.body("ClassificationTrain", "resnet18")["status"]["message"]
    late = rec.reconcile(api.body("ClassificationTrain", "resnet18"), now="2030-01-01T00:05:00Z")
    assert late.requeue_after is None  # no Kueue at all, it seems: no polling forever
    _workload(api, job, [PENDING])
    said = rec.reconcile(api.body("ClassificationTrain", "resnet18"), now="2030-01-01T00:00:04Z")
    assert said.requeue_after is None


def test_a_chart_without_workload_access_still_shows_the_queue(api, rec):
    """RBAC from an older chart (403 on Workloads): the status names the queue; the pass does not fail."""
    _held_by_kueue(api, rec)
    api.fail("list", "Workload", 403)
    rec.reconcile(api.body("ClassificationTrain", "resnet18"), now="2030-01-01T00:10:00Z")
    st = api.body("ClassificationTrain", "resnet18")["status"]
    assert (st["phase"], st["reason"]) == ("Suspended", "Queued") and "LocalQueue team-a" in st["message"]


def _spread_terms(template):
    anti = template["spec"].get("affinity", {}).get("podAntiAffinity", {})
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti  # a preference: one node still runs it
    return anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])


def test_workers_of_a_run_prefer_different_nodes(settings):
    """Two CPU ranks (one per worker pod): each worker prefers a node without another worker of the same run, by
    the node's hostname; the term selects exactly the run's worker pods (not the launcher, not another run's)."""
    plan = plan_for(train_body(gpus=0, numProcesses=2), settings)
    assert_valid(plan)
    job = by_kind(plan, "MPIJob")[0]
    worker = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]
    launcher = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]
    (term,) = _spread_terms(worker)
    assert term["weight"] == 100
    affinity_term = term["podAffinityTerm"]
    assert affinity_term["topologyKey"] == "kubernetes.io/hostname"
    selector = affinity_term["labelSelector"]["matchLabels"]
    assert selector.items() <= worker["metadata"]["labels"].items()  # the workers match it ...
    assert not selector.items() <= launcher["metadata"]["labels"].items()  # ... the launcher does not
    assert selector["kestrel.dev/run-hash"] == job["metadata"]["labels"]["kestrel.dev/run-hash"]
    assert _spread_terms(launcher) == []
    other = by_kind(plan_for(train_body("other", gpus=0, numProcesses=2), settings), "MPIJob")[0]
    other_worker = other["spec"]["mpiReplicaSpecs"]["Worker"]["template"]
    assert not selector.items() <= other_worker["metadata"]["labels"].items()


def test_one_rank_runs_have_no_spread_and_the_users_pod_anti_affinity_wins(settings):
    one = by_kind(plan_for(train_body(gpus=0), settings), "MPIJob")[0]
    assert "Worker" not in one["spec"]["mpiReplicaSpecs"]
    assert "affinity" not in one["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    own = {"podAntiAffinity": {}}  # the user turns the spread off
    job = by_kind(plan_for(train_body(gpus=0, numProcesses=2, affinity=own), settings), "MPIJob")[0]
    assert job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["affinity"] == own


def test_every_pod_tolerates_a_lost_node_for_the_operators_seconds_only(settings):
    """Bounded tolerations of the node lifecycle controller's taints (Kubernetes would add 300 s): a run whose node
    stops answering is evicted after the operator's setting and started again; the user's own toleration of a taint
    wins, and `None` adds nothing."""
    job = by_kind(plan_for(train_body(gpus=0, numProcesses=2), settings), "MPIJob")[0]
    for replica in job["spec"]["mpiReplicaSpecs"].values():
        got = {t["key"]: t for t in replica["template"]["spec"]["tolerations"]}
        for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"):
            assert got[key] == {"key": key, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": settings.node_lost_seconds}
    own = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
           "tolerationSeconds": 600}
    job = by_kind(plan_for(train_body(tolerations=[own]), settings), "MPIJob")[0]
    tols = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["tolerations"]
    assert [t for t in tols if t["key"] == own["key"]] == [own]
    none = dataclasses.replace(settings, node_lost_seconds=None)
    job = by_kind(plan_for(train_body(), none), "MPIJob")[0]
    assert "tolerations" not in job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
