"""Pod templates for the launcher and the workers.

Every pod gets the same volumes (spec, data, results, a referenced model, /dev/shm) so a rank finds
the same paths wherever it runs, and runs as a non-root user without privilege escalation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Optional

from kestrel_operator.manifests.commands import SPEC_DIR, SPEC_FILE
from kestrel_operator.manifests.storage import storage_env, storage_volumes
from kestrel_operator.resources.types import Resource, RunSpec, VolumeSpec
from kestrel_trainer.spec.contract import KEY_ENV, REQUIRE_GPUS_ENV, RunIdentity

RUN_AS_USER = 1000
SHM_VOLUME = "shm"
SPEC_VOLUME = "spec"
# Resources of a launcher that only runs mpirun (its ranks run on the workers); limits too, so namespaces whose
# ResourceQuota covers limits.cpu/limits.memory admit it. spec.launcherResources overrides per entry.
MPIRUN_LAUNCHER_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
# The init container that removes old runs' folders (spec.keepRuns): a file-tree walk.
CLEANUP_CONTAINER = "remove-old-runs"
# The opt-in init container giving the results folder to RUN_AS_USER (spec.volumes.results.fixOwnership), for volumes
# that ignore fsGroup: root, but only the capabilities chown needs (CHOWN; FOWNER and DAC_OVERRIDE for a folder that
# another user owns with a mode that shuts root-without-DAC_OVERRIDE out), every other one dropped.
OWNERSHIP_CONTAINER = "results-ownership"
OWNERSHIP_CAPABILITIES = ("CHOWN", "FOWNER", "DAC_OVERRIDE")
CLEANUP_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
# Worker pods of one run prefer different nodes (a preferred podAntiAffinity term on the node's hostname label): ranks
# do not compete for one node's CPUs, memory bandwidth and network, and a run with more workers than nodes, or on one
# node, still schedules. The weight is the largest the API allows, so the preference outweighs the scheduler's
# other scores (a node with fewer pods, an image already present).
HOSTNAME_TOPOLOGY = "kubernetes.io/hostname"
# The taints the node lifecycle controller puts on a node that stopped answering; a pod is evicted once its toleration
# of them runs out (RunSpec.node_lost_seconds), and the operator then starts the attempt again (status/pods.py).
NODE_LOST_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
SPREAD_WEIGHT = 100


def _claim_volumes(mounts: list[tuple[str, VolumeSpec]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One pod volume per distinct claim (named by its first role), one mount per role."""
    volumes: list[dict[str, Any]] = []
    by_claim: dict[str, str] = {}
    volume_mounts: list[dict[str, Any]] = []
    for role, vol in mounts:
        name = by_claim.get(vol.claim_name)
        if name is None:
            name = by_claim[vol.claim_name] = role
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": vol.claim_name}})
        mount: dict[str, Any] = {"name": name, "mountPath": vol.mount_path}
        if vol.sub_path:
            mount["subPath"] = vol.sub_path
        if vol.read_only:
            mount["readOnly"] = True
        volume_mounts.append(mount)
    return volumes, volume_mounts


def volumes_and_mounts(
    res: Resource, configmap: Optional[str], model_volume: Optional[VolumeSpec]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    run = res.run
    claims: list[tuple[str, VolumeSpec]] = []
    if run.data is not None:
        claims.append(("data", run.data))
    if run.results is not None:
        claims.append(("results", run.results))
    if model_volume is not None:
        claims.append(("model-source", model_volume))
    volumes, mounts = _claim_volumes(claims)
    s3_volumes, s3_mounts = storage_volumes(run)
    volumes += s3_volumes
    mounts += s3_mounts
    if configmap is not None:
        volumes.append({"name": SPEC_VOLUME, "configMap": {"name": configmap, "items": [
            {"key": SPEC_FILE, "path": SPEC_FILE}]}})
        mounts.append({"name": SPEC_VOLUME, "mountPath": SPEC_DIR, "readOnly": True})
    shm: dict[str, Any] = {"medium": "Memory"}
    if run.shm_size:
        shm["sizeLimit"] = run.shm_size
    volumes.append({"name": SHM_VOLUME, "emptyDir": shm})
    mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    return volumes, mounts


def user_env(res: Resource) -> list[dict[str, Any]]:
    """spec.env as given (NCCL_*, proxies), on every container that runs the trainer or sshd."""
    return [dict(e) for e in res.run.env]


def trainer_env(res: Resource, run_name: str) -> list[dict[str, Any]]:
    """The key from the Secret, and who the trainer is (to patch its own status); then spec.env."""
    meta = res.meta
    group, _, version = meta.api_version.partition("/")
    identity = RunIdentity(group=group, version=version, plural=meta.plural, name=meta.name,
                           namespace=meta.namespace, uid=meta.uid, run=run_name)
    key = {"name": KEY_ENV, "valueFrom": {"secretKeyRef": {"name": res.run.key_secret.name,
                                                            "key": res.run.key_secret.key}}}
    # the GPUs the pod's run asked for: fewer visible is the trainer's one-line error, not a run on the CPU
    require = {"name": REQUIRE_GPUS_ENV, "value": str(res.run.gpus)}
    return [key, *({"name": n, "value": v} for n, v in identity.env()), require, *storage_env(res.run),
            *user_env(res)]


def _security_context(ipc_lock: bool = False) -> dict[str, Any]:
    """Non-root, no privilege escalation, no capabilities but IPC_LOCK with spec.network.ipcLock (RDMA)."""
    return {
        "allowPrivilegeEscalation": False,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "capabilities": {"drop": ["ALL"], **({"add": ["IPC_LOCK"]} if ipc_lock else {})},
    }


def cleanup_container(res: Resource, folders: Sequence[str], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The launcher's init container removing old runs' folders (`kestrel runs remove`, which refuses any path
    that is not <...>/runs/<run hash> and logs each folder it removes). Only the results volume is mounted."""
    assert res.run.results is not None, "old runs are removed from a results volume only"
    results = res.run.results.mount_path
    c: dict[str, Any] = {
        "name": CLEANUP_CONTAINER,
        "image": res.run.image,
        "command": ["kestrel", "runs", "remove", *folders],
        "resources": {k: dict(v) for k, v in CLEANUP_RESOURCES.items()},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [dict(m) for m in mounts if m["mountPath"] == results],
        "securityContext": _security_context(),
    }
    if res.run.image_pull_policy:
        c["imagePullPolicy"] = res.run.image_pull_policy
    return c


def ownership_container(res: Resource, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    """The init container of spec.volumes.results.fixOwnership: the results volume mounted as the trainer sees it
    (kubelet creates a missing subPath, as root), and that one folder, not its contents, chowned to the pods' user,
    so a fresh hostPath or NFS folder takes the run's files. Not recursive: a big volume is not walked; the trainer
    writes everything below it as that user anyway."""
    results = res.run.results.mount_path
    c: dict[str, Any] = {
        "name": OWNERSHIP_CONTAINER,
        "image": res.run.image,
        "command": ["chown", f"{RUN_AS_USER}:{RUN_AS_USER}", results],
        "resources": {k: dict(v) for k, v in CLEANUP_RESOURCES.items()},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [dict(m) for m in mounts if m["mountPath"] == results],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": list(OWNERSHIP_CAPABILITIES)},
        },
    }
    if res.run.image_pull_policy:
        c["imagePullPolicy"] = res.run.image_pull_policy
    return c


def tolerations(run: RunSpec) -> list[dict[str, Any]]:
    """spec.tolerations, plus a bounded toleration of each lost-node taint the user does not tolerate already."""
    out = [dict(t) for t in run.tolerations]
    if run.node_lost_seconds is not None:
        have = {t.get("key") for t in out}
        out += [{"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": run.node_lost_seconds}
                for key in NODE_LOST_TAINTS if key not in have]
    return out


def spread_affinity(selector: dict[str, str]) -> dict[str, Any]:
    """`affinity` asking the scheduler to put pods matching `selector` on different nodes when it can."""
    term = {"labelSelector": {"matchLabels": dict(selector)}, "topologyKey": HOSTNAME_TOPOLOGY}
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": SPREAD_WEIGHT, "podAffinityTerm": term}]}}


def _affinity(res: Resource, spread: Optional[dict[str, str]]) -> dict[str, Any]:
    """spec.affinity as given, plus the workers' spread unless the user's affinity has a podAntiAffinity of its
    own (which then decides, `podAntiAffinity: {}` turning the spread off)."""
    affinity = copy.deepcopy(dict(res.run.affinity)) if res.run.affinity else {}
    if spread is not None and "podAntiAffinity" not in affinity:
        affinity.update(spread_affinity(spread))
    return affinity


def _resources(res: Resource, gpus: int, runs_ranks: bool) -> dict[str, Any]:
    if not runs_ranks:
        out = {k: dict(v) for k, v in MPIRUN_LAUNCHER_RESOURCES.items()}
        for section, values in res.run.launcher_resources.items():
            out.setdefault(section, {}).update(values)
        return out
    out: dict[str, dict[str, str]] = {k: dict(v) for k, v in res.run.resources.items()}
    if gpus:  # the count, whatever the resource's name (a MIG profile, a time-sliced GPU)
        out.setdefault("limits", {})[res.run.gpu_resource] = str(gpus)
    return out


def pod_template(
    res: Resource,
    *,
    container: str,
    labels: dict[str, str],
    command: Optional[list[str]],
    args: Optional[list[str]],
    env: list[dict[str, Any]],
    gpus: int,
    runs_ranks: bool,
    volumes: list[dict[str, Any]],
    mounts: list[dict[str, Any]],
    service_account: str,
    spread: Optional[dict[str, str]] = None,
) -> dict[str, Any]:
    """One pod template; `spread`: labels of the pods this one should avoid sharing a node with (workers)."""
    run = res.run
    c: dict[str, Any] = {"name": container, "image": run.image}
    if run.image_pull_policy:
        c["imagePullPolicy"] = run.image_pull_policy
    if command:
        c["command"] = command
    if args:
        c["args"] = args
    if env:
        c["env"] = env
    c["resources"] = _resources(res, gpus, runs_ranks)
    # A failed trainer's last log lines become the pod's termination message: the operator reads the
    # trainer's one-line error from there into the resource's status (status/trainer_error.py).
    c["terminationMessagePolicy"] = "FallbackToLogsOnError"
    c["volumeMounts"] = mounts
    if container == "launcher":
        # A failed trainer's last log line becomes the termination message the status quotes.
        c["terminationMessagePolicy"] = "FallbackToLogsOnError"
    network = run.network if runs_ranks else None  # spec.network: only the pods that run ranks
    c["securityContext"] = _security_context(ipc_lock=bool(network and network.ipc_lock))
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            # Most CSI volumes honour fsGroup: the kubelet gives the volume to the group once, and skips the
            # recursive walk when the root already has it (a big volume is not re-walked on every pod start).
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [c],
        "volumes": volumes,
        # SIGTERM -> SIGKILL: the ranks' graceful stop (agree on a step, rank 0 checkpoints) must fit in it
        "terminationGracePeriodSeconds": run.termination_grace_seconds,
    }
    if network and network.host_network:
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"  # the cluster's DNS still (the MPIJob's worker names)
    if run.node_selector:
        spec["nodeSelector"] = dict(run.node_selector)
    pod_tolerations = tolerations(run)
    if pod_tolerations:
        spec["tolerations"] = pod_tolerations
    if run.priority_class_name:
        spec["priorityClassName"] = run.priority_class_name
    if run.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in run.image_pull_secrets]
    if run.scheduler_name:
        spec["schedulerName"] = run.scheduler_name
    affinity = _affinity(res, spread)
    if affinity:
        spec["affinity"] = affinity
    if run.runtime_class_name:
        spec["runtimeClassName"] = run.runtime_class_name
    if run.results is not None and run.results.fix_ownership:  # a results volume (not spec.storage)
        spec["initContainers"] = [ownership_container(res, mounts)]
    metadata: dict[str, Any] = {"labels": {**run.labels, **labels}}
    if run.annotations:
        metadata["annotations"] = dict(run.annotations)
    return {"metadata": metadata, "spec": spec}
