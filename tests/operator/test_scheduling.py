"""Queueing and gang scheduling passthrough: what the MPIJob and its pod templates carry, written out by hand
from the MPIJob v2beta1 API (runPolicy.suspend, runPolicy.schedulingPolicy), Kueue's job label and core/v1
PodSpec fields; plus the operator's refusals, and schema validity of the result."""

from __future__ import annotations

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
    for template in templates(job):
        spec = template["spec"]
        assert (spec["schedulerName"], spec["runtimeClassName"], spec["affinity"]) == ("volcano", "nvidia", AFFINITY)
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
