"""ClassificationTrain end to end: apply -> ConfigMap + MPIJob -> pods on fake GPU nodes -> launcher
finishes -> MPIJob and resource Succeeded (or Failed with the reason), against the real API server,
controller-manager, scheduler, kwok and MPI controller."""

from __future__ import annotations

import time

import pytest
import yaml

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e.captures import capture
from e2e.conftest import wait_until

KIND = "ClassificationTrain"


def _train(namespace: str, name: str = "resnet18-e2e", **spec_overrides: object) -> dict:
    res = ko.in_namespace(ko.example("train.yaml", KIND), namespace, name)
    res["spec"].update(spec_overrides)
    return res


def _apply_train(cp: cl.ControlPlane, namespace: str, res: dict) -> dict:
    ko.prepare(cp, namespace, res)
    cp.apply(res)
    return ko.get_resource(cp, KIND, res["metadata"]["name"], namespace)


def _one_mpijob(cp: cl.ControlPlane, owner: dict, timeout: float = 60) -> dict:
    jobs = wait_until(f"MPIJob owned by {owner['metadata']['name']}", lambda: ko.mpijobs_of(cp, owner), timeout)
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    return jobs[0]


def _worker_limits(job: dict) -> dict:
    container = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    return container.get("resources", {}).get("limits", {})


@pytest.mark.usefixtures("operator")
def test_example_train_runs_to_succeeded(cluster: cl.ControlPlane, namespace: str, mpi_controller: str) -> None:
    res = _apply_train(cluster, namespace, _train(namespace))
    name, spec = res["metadata"]["name"], res["spec"]

    job = _one_mpijob(cluster, res)
    gpus = int(spec["gpus"])
    procs = int(spec.get("numProcesses") or gpus)
    per_node = int(spec.get("gpusPerNode") or 8)
    slots, replicas, gpus_per_worker = ko.gpu_mapping(gpus, procs, per_node)
    assert job["spec"]["slotsPerWorker"] == slots
    if procs > 1:
        assert job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == replicas
        assert _worker_limits(job)[cl.GPU_RESOURCE] in (gpus_per_worker, str(gpus_per_worker))
    assert job["metadata"]["labels"][ko.MANAGED_BY_LABEL]
    assert job["metadata"]["labels"][f"kestrel.dev/{KIND.lower()}"] == name

    configmaps = ko.configmaps_of(cluster, res)
    assert len(configmaps) == 1
    if "experimentSpec" in spec:
        assert spec["experimentSpec"].strip() in "\n".join(configmaps[0]["data"].values())

    # kwok runs the worker pods on the fake GPU nodes, the launcher Job completes, the MPIJob succeeds.
    done = ko.wait_phase(cluster, KIND, name, namespace, "Succeeded", timeout=180)
    job = ko.mpijobs_of(cluster, res)[0]
    assert ko.condition(job, "Succeeded"), job.get("status")
    pods = cluster.get("pods", namespace=namespace)["items"]
    assert pods and all(p["spec"].get("nodeName", "").startswith("gpu-node-") for p in pods)
    status = done["status"]
    assert status.get("observedGeneration") == res["metadata"]["generation"]
    assert status.get("startTime") and status.get("completionTime")
    reasons = {e["reason"] for e in ko.events_for(cluster, namespace, name)}
    assert len(reasons) >= 2, reasons  # at least: created the run, and it succeeded

    table = cluster.kubectl("get", "classificationtrains", "-n", namespace).stdout
    assert name in table and "Succeeded" in table

    if mpi_controller == "real":
        # What only the real MPI Operator makes from our MPIJob: the hostfile with our slots, SSH keys.
        mpi_name = job["metadata"]["name"]
        hostfile = cluster.get("configmap", f"{mpi_name}-config", namespace)["data"]["hostfile"]
        hosts = [line for line in hostfile.splitlines() if line.strip()]
        assert len(hosts) == replicas and all(line.endswith(f"slots={slots}") for line in hosts), hostfile
        assert cluster.exists("secret", f"{mpi_name}-ssh", namespace)


@pytest.mark.usefixtures("operator")
def test_failing_launcher_makes_the_train_failed_with_the_reason(cluster: cl.ControlPlane) -> None:
    namespace = cl.LAUNCHER_FAILS_NAMESPACE  # kwok-stages.yaml fails Job pods in this namespace (exit 1)
    cluster.kubectl("create", "namespace", namespace)
    try:
        res = _apply_train(cluster, namespace, _train(namespace, backoffLimit=0))
        failed = ko.wait_phase(cluster, KIND, res["metadata"]["name"], namespace, "Failed", timeout=180)
        job = ko.mpijobs_of(cluster, res)[0]
        assert ko.condition(job, "Failed"), job.get("status")
        failed_cond = ko.condition(failed, "Failed")
        assert failed_cond and failed_cond.get("reason"), failed["status"]
        assert failed_cond.get("message"), failed["status"]
        # The launcher's termination message (terminationMessagePolicy FallbackToLogsOnError: the trainer's
        # last log line; here kwok's stage writes it, see kwok-stages.yaml) is the resource's message.
        status = failed["status"]
        assert status["reason"] == "TrainerFailed", status
        assert "kwok: simulated trainer failure" in status["message"] and "code 1" in status["message"], status
        assert status["attempt"] == 1, status  # the trainer's own error: never retried
        events = ko.events_for(cluster, namespace, res["metadata"]["name"])
        assert any(e["type"] == "Warning" and e["reason"] == "TrainerFailed" for e in events), events
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.usefixtures("operator")
def test_invalid_spec_text_fails_with_line_number_and_creates_nothing(cluster: cl.ControlPlane, namespace: str) -> None:
    bad = 'model_config {\n  arch: "resnet"\n  n_layers: 18\n  no_such_field: 3\n}\n'
    res = _train(namespace, name="bad-spec", experimentSpec=bad)
    res["spec"].pop("experimentSpecRef", None)
    res = _apply_train(cluster, namespace, res)
    failed = ko.wait_phase(cluster, KIND, "bad-spec", namespace, "Failed", timeout=60)
    capture(failed, "train-degraded-invalid-spec")
    cond = ko.condition(failed, "Failed") or {}
    status = failed["status"]
    text = f"{cond.get('reason')} {cond.get('message')} {status.get('reason')} {status.get('message')}"
    assert "InvalidSpec" in text, failed["status"]
    assert "no_such_field" in text and ":4:" in text, failed["status"]  # loader's file:line:col
    assert any(e["reason"] == "InvalidSpec" for e in ko.events_for(cluster, namespace, "bad-spec"))
    time.sleep(3)  # a wrong operator would create its objects right after the status; give it the chance
    assert ko.mpijobs_of(cluster, res) == []
    assert ko.configmaps_of(cluster, res) == []


@pytest.mark.usefixtures("kestrel_crds")
def test_api_server_rejects_gpus_not_divisible_by_processes(cluster: cl.ControlPlane, namespace: str) -> None:
    res = _train(namespace, name="bad-gpus", gpus=6, numProcesses=4)
    out = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(res), check=False)
    assert out.returncode != 0
    assert "Invalid value" in out.stderr or "invalid" in out.stderr.lower(), out.stderr
    assert not cluster.exists(f"classificationtrains.{ko.GROUP}", "bad-gpus", namespace)


def test_operator_killed_mid_reconcile_creates_exactly_one_mpijob(
    cluster: cl.ControlPlane, namespace: str, operator: cl.Operator
) -> None:
    res = _train(namespace, name="crash-test")
    ko.prepare(cluster, namespace, res)
    cluster.apply(res)
    res = ko.get_resource(cluster, KIND, "crash-test", namespace)
    # Kill as soon as the first owned object shows up: the operator is between creating objects and
    # writing status (or the MPI controller has not reacted yet).
    wait_until("first owned object", lambda: ko.configmaps_of(cluster, res) or ko.mpijobs_of(cluster, res),
               timeout=60, interval=0.05)
    operator.kill()
    operator.start()
    ko.wait_phase(cluster, KIND, "crash-test", namespace, "Succeeded", timeout=180)
    assert len(ko.mpijobs_of(cluster, res)) == 1
    assert len(ko.configmaps_of(cluster, res)) == 1
    # Once more with the run finished: a restart must not start the run again.
    operator.kill()
    operator.start()
    time.sleep(5)
    assert len(ko.mpijobs_of(cluster, res)) == 1
    assert ko.phase(cluster, KIND, "crash-test", namespace) == "Succeeded"


@pytest.mark.usefixtures("operator")
def test_spec_change_starts_a_new_run_and_delete_collects_everything(
    cluster: cl.ControlPlane, namespace: str
) -> None:
    res = _apply_train(cluster, namespace, _train(namespace, name="gitops"))
    first = _one_mpijob(cluster, res)
    cluster.kubectl("patch", f"classificationtrains.{ko.GROUP}", "gitops", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"useAmp": false, "backoffLimit": 1}}')
    res2 = ko.get_resource(cluster, KIND, "gitops", namespace)
    assert res2["metadata"]["generation"] > res["metadata"]["generation"]

    def new_run() -> dict | None:
        jobs = ko.mpijobs_of(cluster, res2)
        fresh = [j for j in jobs if j["metadata"]["uid"] != first["metadata"]["uid"]]
        return fresh[0] if fresh and all(j["metadata"]["uid"] != first["metadata"]["uid"] for j in jobs) else None

    second = wait_until("new MPIJob for the new generation, old one gone", new_run, timeout=120)
    assert second["metadata"]["name"] != first["metadata"]["name"]
    done = ko.wait_phase(cluster, KIND, "gitops", namespace, "Succeeded", timeout=180)
    assert done["status"]["observedGeneration"] == res2["metadata"]["generation"]

    cluster.kubectl("delete", f"classificationtrains.{ko.GROUP}", "gitops", "-n", namespace, "--wait=true")
    # The real garbage collector removes the MPIJob, the ConfigMap, and (through the MPIJob) the pods/Job.
    wait_until("owned objects garbage-collected", lambda: not ko.mpijobs_of(cluster, res2)
               and not ko.configmaps_of(cluster, res2)
               and not cluster.get("jobs", namespace=namespace)["items"]
               and not cluster.get("pods", namespace=namespace)["items"], timeout=120)


@pytest.mark.usefixtures("operator")
def test_sixteen_gpus_run_as_two_workers_on_two_nodes(cluster: cl.ControlPlane, namespace: str) -> None:
    res = _apply_train(cluster, namespace, _train(namespace, name="wide", gpus=16, numProcesses=16, gpusPerNode=8))
    job = _one_mpijob(cluster, res)
    assert job["spec"]["slotsPerWorker"] == 8
    assert job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    assert _worker_limits(job)[cl.GPU_RESOURCE] in (8, "8")

    def worker_nodes() -> set[str] | None:
        pods = cluster.get("pods", namespace=namespace)["items"]
        workers = [p for p in pods if (p["spec"].get("containers") or [{}])[0].get("resources", {})
                   .get("limits", {}).get(cl.GPU_RESOURCE) == "8" and p["status"].get("phase") == "Running"]
        return {p["spec"]["nodeName"] for p in workers} if len(workers) == 2 else None

    # The real scheduler cannot fit two 8-GPU workers on one 8-GPU node.
    assert len(wait_until("two GPU workers Running", worker_nodes, timeout=90)) == 2
    ko.wait_phase(cluster, KIND, "wide", namespace, "Succeeded", timeout=180)
