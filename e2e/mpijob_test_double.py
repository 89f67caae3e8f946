"""TEST DOUBLE for the Kubeflow MPI Operator: used by the e2e suite only when the real controller's
binary is absent (KESTREL_E2E_MPI=double, or e2e/build.sh run with KESTREL_E2E_SKIP_MPI=1).

It does the part of the MPI Operator's job that our operator depends on, against the real API server:
for each kubeflow.org/v2beta1 MPIJob it creates the worker pods and the launcher batch/v1 Job (both owned
by the MPIJob, so the controller-manager garbage-collects them), then mirrors the launcher Job's state into
the MPIJob's status conditions (Created, Running, Succeeded, Failed) and replicaStatuses. It does not do
SSH keys, hostfiles, services, gang scheduling, suspend or restart policies; tests that need those need the
real operator. Level-triggered: it re-lists every second, so it can be killed and restarted at any time.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import signal
import sys
import time

from kubernetes import client, config
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "kubeflow.org", "v2beta1", "mpijobs"
LOG = logging.getLogger("mpijob-test-double")
_running = True


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner(job: dict) -> dict:
    meta = job["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MPIJob", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _labels(job: dict, role: str) -> dict:
    return {"training.kubeflow.org/job-name": job["metadata"]["name"],
            "training.kubeflow.org/operator-name": "mpi-operator", "training.kubeflow.org/job-role": role}


def _pod_template(job: dict, role: str) -> dict:
    spec = job["spec"]["mpiReplicaSpecs"][role]
    template = copy.deepcopy(spec.get("template", {}))
    template.setdefault("metadata", {}).setdefault("labels", {}).update(_labels(job, role.lower()))
    return template


def _condition(status: dict, ctype: str, reason: str, message: str) -> bool:
    """Set condition ctype True; returns whether anything changed."""
    conds = status.setdefault("conditions", [])
    for c in conds:
        if c["type"] == ctype:
            if c["status"] == "True" and c.get("reason") == reason:
                return False
            c.update(status="True", reason=reason, message=message, lastTransitionTime=_now())
            return True
    conds.append({"type": ctype, "status": "True", "reason": reason, "message": message,
                  "lastTransitionTime": _now(), "lastUpdateTime": _now()})
    return True


def _create(fn, *args) -> None:
    try:
        fn(*args)
    except ApiException as exc:
        if exc.status != 409:
            raise


def reconcile(job: dict, core: client.CoreV1Api, batch: client.BatchV1Api, crd: client.CustomObjectsApi) -> None:
    meta, spec = job["metadata"], job["spec"]
    ns, name = meta["namespace"], meta["name"]
    status = copy.deepcopy(job.get("status") or {})
    done = any(c["type"] in ("Succeeded", "Failed") and c["status"] == "True" for c in status.get("conditions", []))
    if done or meta.get("deletionTimestamp"):
        return
    replicas = spec["mpiReplicaSpecs"]
    workers = int(replicas.get("Worker", {}).get("replicas", 0) or 0)
    for i in range(workers):
        template = _pod_template(job, "Worker")
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"{name}-worker-{i}", "namespace": ns, "labels": template["metadata"]["labels"],
                            "ownerReferences": [_owner(job)]},
               "spec": template.get("spec", {})}
        _create(core.create_namespaced_pod, ns, pod)
    launcher_template = _pod_template(job, "Launcher")
    launcher_template.setdefault("spec", {}).setdefault("restartPolicy", "Never")
    if launcher_template["spec"]["restartPolicy"] == "Always":
        launcher_template["spec"]["restartPolicy"] = "OnFailure"
    launcher = {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": f"{name}-launcher", "namespace": ns, "labels": _labels(job, "launcher"),
                             "ownerReferences": [_owner(job)]},
                "spec": {"backoffLimit": int(spec.get("runPolicy", {}).get("backoffLimit", 6)),
                         "template": launcher_template}}
    _create(batch.create_namespaced_job, ns, launcher)

    changed = _condition(status, "Created", "MPIJobCreated", f"MPIJob {ns}/{name} is created.")
    if "startTime" not in status:
        status["startTime"], changed = _now(), True
    launcher_job = batch.read_namespaced_job(f"{name}-launcher", ns)
    lstatus = launcher_job.status
    job_conds = {c.type: c for c in (lstatus.conditions or []) if c.status == "True"}
    new_replicas = {"Launcher": {"active": lstatus.active or 0, "succeeded": lstatus.succeeded or 0,
                                 "failed": lstatus.failed or 0},
                    "Worker": {"active": workers}}
    if status.get("replicaStatuses") != new_replicas:
        status["replicaStatuses"], changed = new_replicas, True
    if "Complete" in job_conds:
        changed |= _condition(status, "Succeeded", "MPIJobSucceeded", f"MPIJob {ns}/{name} successfully completed.")
        status["completionTime"] = _now()
    elif "Failed" in job_conds:
        c = job_conds["Failed"]
        changed |= _condition(status, "Failed", "MPIJobFailed", f"Job has failed: {c.reason}: {c.message}")
        status["completionTime"] = _now()
    elif lstatus.active:
        changed |= _condition(status, "Running", "MPIJobRunning", f"MPIJob {ns}/{name} is running.")
    if changed:
        status["lastReconcileTime"] = _now()
        crd.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name, {"status": status})
        LOG.info("%s/%s status: %s", ns, name, [c["type"] for c in status.get("conditions", [])])


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    config.load_kube_config(os.environ.get("KUBECONFIG"))
    core, batch, crd = client.CoreV1Api(), client.BatchV1Api(), client.CustomObjectsApi()

    def _stop(*_: object) -> None:
        global _running
        _running = False

    signal.signal(signal.SIGTERM, _stop)
    crd.list_cluster_custom_object(GROUP, VERSION, PLURAL)  # the CRD must be served before we say ready
    LOG.info("ready: test double for the MPI Operator (kubeflow.org/v2beta1 MPIJob)")
    while _running:
        for job in crd.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]:
            try:
                reconcile(job, core, batch, crd)
            except ApiException as exc:
                meta = job["metadata"]
                LOG.warning("%s/%s: %s %s", meta["namespace"], meta["name"], exc.status, exc.reason)
        time.sleep(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
