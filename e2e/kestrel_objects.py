"""Helpers the operator tests share: load the examples, give their volumes somewhere to bind, and read
back what the operator created (found by the labels it documents, not by guessing names)."""

from __future__ import annotations

import copy
import time
import uuid
from pathlib import Path

import yaml

from e2e import cluster as cl
from e2e.conftest import wait_until

GROUP = "kestrel.dev"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
EXAMPLES = cl.REPO_ROOT / "examples" / "k8s"
PLURALS = {
    "ClassificationTrain": "classificationtrains",
    "ClassificationPrune": "classificationprunes",
    "ClassificationExport": "classificationexports",
}


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def example(name: str, kind: str | None = None) -> dict:
    """The first document of examples/k8s/<name> (of `kind` when given), as a fresh dict."""
    for doc in load_docs(EXAMPLES / name):
        if kind is None or doc.get("kind") == kind:
            return copy.deepcopy(doc)
    raise LookupError(f"no {kind or 'document'} in {EXAMPLES / name}")


def in_namespace(doc: dict, namespace: str, name: str | None = None) -> dict:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = namespace
    if name:
        doc["metadata"]["name"] = name
    return doc


def claim_names(resource: dict) -> list[str]:
    return sorted({v["claimName"] for v in (resource["spec"].get("volumes") or {}).values() if v.get("claimName")})


def provide_claims(cp: cl.ControlPlane, namespace: str, claims: list[str],
                   host_paths: dict[str, Path] | None = None) -> None:
    """Pre-bound PV + PVC per claim: there is no storage provisioner here, and the scheduler keeps a pod
    whose claim is unbound Pending. Each PV is a hostPath: the folder given in host_paths (the real node
    mounts it), else a path nobody mounts (kwok runs no containers)."""
    docs: list[dict] = []
    for claim in claims:
        pv = f"pv-{namespace}-{claim}"[:63]
        path = str((host_paths or {}).get(claim) or f"/nonexistent/{pv}")
        docs.append({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany"],
                     # Retain: deleting the claim never touches the folder (the test reads it afterwards).
                     "persistentVolumeReclaimPolicy": "Retain" if host_paths else "Delete",
                     "storageClassName": "",
                     "hostPath": {"path": path, "type": "Directory" if host_paths else ""},
                     "claimRef": {"namespace": namespace, "name": claim}},
        })
        docs.append({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                     "resources": {"requests": {"storage": "1Gi"}}},
        })
    if docs:
        cp.apply(docs)
        for claim in claims:
            wait_until(f"PVC {claim} Bound",
                       lambda c=claim: cp.get("pvc", c, namespace)["status"].get("phase") == "Bound")


def provide_key_secret(cp: cl.ControlPlane, namespace: str, resource: dict) -> None:
    ref = resource["spec"].get("keySecretRef")
    if not ref:
        return
    cp.kubectl("create", "secret", "generic", ref["name"], "-n", namespace,
               f"--from-literal={ref.get('key', 'key')}=e2e-{uuid.uuid4().hex}", check=False)


def prepare(cp: cl.ControlPlane, namespace: str, resource: dict) -> None:
    """What a user creates before the resource: its key Secret and its volume claims."""
    provide_key_secret(cp, namespace, resource)
    provide_claims(cp, namespace, claim_names(resource))


def get_resource(cp: cl.ControlPlane, kind: str, name: str, namespace: str) -> dict:
    return cp.get(f"{PLURALS[kind]}.{GROUP}", name, namespace)


def owned_by(obj: dict, owner: dict) -> bool:
    return any(ref.get("uid") == owner["metadata"]["uid"] and ref.get("controller")
               for ref in obj["metadata"].get("ownerReferences", []))


def mpijobs_of(cp: cl.ControlPlane, owner: dict) -> list[dict]:
    ns = owner["metadata"]["namespace"]
    return [j for j in cp.get("mpijobs.kubeflow.org", namespace=ns)["items"] if owned_by(j, owner)]


def configmaps_of(cp: cl.ControlPlane, owner: dict) -> list[dict]:
    ns = owner["metadata"]["namespace"]
    return [c for c in cp.get("configmaps", namespace=ns)["items"] if owned_by(c, owner)]


def condition(obj: dict, ctype: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions", []) or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return c
    return None


def phase(cp: cl.ControlPlane, kind: str, name: str, namespace: str) -> str | None:
    return (get_resource(cp, kind, name, namespace).get("status") or {}).get("phase")


def wait_phase(cp: cl.ControlPlane, kind: str, name: str, namespace: str, wanted: str,
               timeout: float = 120) -> dict:
    """Wait for status.phase == wanted; a different terminal phase fails at once with the status."""
    terminal = {"Succeeded", "Failed"} - {wanted}

    def check() -> dict | None:
        res = get_resource(cp, kind, name, namespace)
        got = (res.get("status") or {}).get("phase")
        if got in terminal:
            raise AssertionError(f"{kind} {namespace}/{name} reached {got}, not {wanted}: {res.get('status')}")
        return res if got == wanted else None

    deadline = time.monotonic() + timeout
    while True:
        res = check()
        if res is not None:
            return res
        if time.monotonic() > deadline:
            status = get_resource(cp, kind, name, namespace).get("status")
            raise AssertionError(f"{kind} {namespace}/{name} not {wanted} after {timeout:.0f}s: {status}")
        time.sleep(0.5)


def events_for(cp: cl.ControlPlane, namespace: str, name: str) -> list[dict]:
    items = cp.get("events", namespace=namespace)["items"]
    return [e for e in items if e.get("involvedObject", {}).get("name") == name]


def gpu_mapping(gpus: int, num_processes: int, gpus_per_node: int) -> tuple[int, int, int]:
    """The documented mapping, recomputed independently here: (slotsPerWorker, worker replicas, GPUs/worker)."""
    k = gpus // num_processes
    slots = max(s for s in range(1, num_processes + 1) if num_processes % s == 0 and s * k <= gpus_per_node)
    return slots, num_processes // slots, slots * k
