"""Resource -> the exact objects of one run. Pure: the handlers and `render` both call `plan_run`.

Order matters only for readability of `render`: RBAC, then the spec ConfigMap, then the MPIJob.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from kestrel_operator.manifests import names
from kestrel_operator.manifests.commands import SPEC_FILE, launcher_command, trainer_command
from kestrel_operator.manifests.gpu_mapping import GpuMapping, map_gpus
from kestrel_operator.manifests.outputs import ModelSource, OutputLocation, model_source, output_location
from kestrel_operator.manifests.pods import (
    cleanup_container,
    pod_template,
    tolerations,
    trainer_env,
    user_env,
    volumes_and_mounts,
)
from kestrel_operator.manifests.runs import run_identity
from kestrel_operator.manifests.storage import forwarded_names
from kestrel_operator.resources.defaults import KUEUE_QUEUE_LABEL
from kestrel_operator.resources.errors import InvalidSpec
from kestrel_operator.resources.parse import S3_SCHEME
from kestrel_operator.resources.spec_text import check_spec_text, with_pretrained_model
from kestrel_operator.resources.types import ModelRef, Resource, TrainResource
from kestrel_trainer.spec.contract import STATUS_VERBS, entrypoint_command

MPIJOB_API_VERSION = "kubeflow.org/v2beta1"
# Recorded on the MPIJob so status can name the run's artifact without re-reading the spec text.
OUTPUT_ANNOTATION = "kestrel.dev/output"  # "claimName|subPath|relativePath|path"
INPUT_MODEL_ANNOTATION = "kestrel.dev/input-model"
# The trainer image's contract for multi-pod runs: user 1000 with this home, sshd configured to run
# unprivileged from ~/.sshd_config (as in the MPI Operator's non-root examples), under the image's entrypoint
# (PID 1: on SIGTERM the ranks that orted started in the pod checkpoint and stop before sshd does).
SSH_AUTH_MOUNT_PATH = "/home/kestrel/.ssh"
SSHD_COMMAND = ["/usr/sbin/sshd", "-De", "-f", "/home/kestrel/.sshd_config"]
WORKER_COMMAND = entrypoint_command(SSHD_COMMAND)


@dataclass(frozen=True)
class RunPlan:
    resource: Resource
    mapping: GpuMapping
    experiment: Any  # kestrel_trainer.spec.ExperimentSpec, or None when the kind has no spec text
    spec_text: Optional[str]  # what the run mounts (pretrained path filled in)
    model: Optional[ModelSource]
    output: OutputLocation
    mpijob_name: str
    objects: list[dict[str, Any]]


def encode_output(loc: OutputLocation) -> str:
    return "|".join((loc.claim_name, loc.sub_path, loc.relative_path, loc.path))


def decode_output(value: Optional[str]) -> Optional[dict[str, str]]:
    parts = (value or "").split("|")
    if len(parts) != 4:
        return None
    return {"claimName": parts[0], "subPath": parts[1], "relativePath": parts[2], "path": parts[3]}


def model_ref_of(res: Resource) -> Optional[ModelRef]:
    if isinstance(res, TrainResource):
        return res.pretrained_model
    return res.model


def spec_text_field(res: Resource) -> str:
    """Where the resource's spec text comes from, as messages name it."""
    return "spec.experimentSpec" if res.run.experiment_spec is not None else "spec.experimentSpecRef"


def validate_spec_text(res: Resource, spec_text: Optional[str]) -> Any:
    """The resolved ExperimentSpec (or None): the InvalidSpec path checks this before anything else."""
    if spec_text is None:
        return None
    return check_spec_text(spec_text, res.meta, spec_text_field(res))


def gpu_mapping(res: Resource, experiment: Any) -> GpuMapping:
    """The run's ranks and pods. model_parallelism is the spec's for training (unknown while the text is not,
    `experiment` None), none for prune and export (one device)."""
    if isinstance(res, TrainResource):
        fractions = experiment.train.model_parallelism if experiment is not None else None
    else:
        fractions = ()
    run = res.run
    return map_gpus(run.gpus, run.num_processes, run.gpus_per_node, fractions, spec_text_field(res))


def _rbac(res: Resource) -> tuple[str, list[dict[str, Any]]]:
    """A Role letting the run's pods get/patch this one resource's status (progress reporting)."""
    meta = res.meta
    group = meta.api_version.split("/")[0]
    objects: list[dict[str, Any]] = []
    sa = res.run.service_account_name
    if sa is None:
        sa = names.service_account_name(meta)
        objects.append({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": names.object_meta(meta, sa, per_run=False),
        })
    role = names.role_name(meta)
    objects.append({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": names.object_meta(meta, role, per_run=False),
        "rules": [{
            "apiGroups": [group],
            "resources": [f"{meta.plural}/status"],
            "resourceNames": [meta.name],
            "verbs": list(STATUS_VERBS),
        }],
    })
    objects.append({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": names.object_meta(meta, role, per_run=False),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": meta.namespace}],
    })
    return sa, objects


def identify(res: Resource, spec_text: Optional[str], upstream: Optional[OutputLocation] = None) -> Resource:
    """`res` with meta.run_hash set to its run's identity (manifests/runs.py) for this spec text and upstream."""
    run_hash = run_identity(res.meta, spec_text, upstream.run_hash if upstream is not None else "")
    return dataclasses.replace(res, meta=dataclasses.replace(res.meta, run_hash=run_hash))


def _mpijob(res: Resource, mapping: GpuMapping, name: str, configmap: Optional[str],
            model: Optional[ModelSource], service_account: str, output: OutputLocation,
            remove: Sequence[str]) -> dict[str, Any]:
    meta = res.meta
    labels = names.run_labels(meta)
    volumes, mounts = volumes_and_mounts(res, configmap, model.volume if model else None)
    trainer = trainer_command(res, mapping, model.path if model else None, configmap is not None, output.path)
    command = launcher_command(trainer, mapping, [e["name"] for e in res.run.env], forwarded_names(res.run),
                               rdma=res.run.network.ipc_lock)

    def common() -> dict[str, Any]:
        # Fresh copies per template: shared lists would become YAML anchors in `render`.
        return dict(labels=labels, volumes=copy.deepcopy(volumes), mounts=copy.deepcopy(mounts),
                    service_account=service_account)

    launcher = pod_template(
        res, container="launcher", command=command[:1], args=command[1:], env=trainer_env(res, name),
        gpus=mapping.gpus_per_pod if mapping.launcher_as_worker else 0,
        runs_ranks=mapping.launcher_as_worker, **common(),
    )
    if remove:  # old runs' folders beyond spec.keepRuns, removed before this run starts
        # after the ownership fix when there is one: `kestrel runs remove` runs as the pods' user
        launcher["spec"]["initContainers"] = [*launcher["spec"].get("initContainers", []),
                                              cleanup_container(res, remove, mounts)]
    run_policy: dict[str, Any] = {"cleanPodPolicy": "Running", "backoffLimit": res.run.backoff_limit}
    if res.run.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = res.run.active_deadline_seconds
    if res.run.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = res.run.ttl_seconds_after_finished
    if res.run.suspend or res.run.queue_name:
        # Queued: created suspended, so nothing runs before Kueue admits it (Kueue unsuspends it then; without
        # Kueue's webhook the MPIJob would start before Kueue sees it).
        run_policy["suspend"] = True
    gang = _scheduling_policy(res)
    if gang:
        run_policy["schedulingPolicy"] = gang
    spec: dict[str, Any] = {
        "slotsPerWorker": mapping.slots_per_worker,
        "runLauncherAsWorker": mapping.launcher_as_worker,
        "mpiImplementation": "OpenMPI",
        "sshAuthMountPath": SSH_AUTH_MOUNT_PATH,
        "runPolicy": run_policy,
        "mpiReplicaSpecs": {"Launcher": {"replicas": 1, "restartPolicy": "Never", "template": launcher}},
    }
    if not mapping.launcher_as_worker:
        # Start mpirun only once every worker's sshd is up, instead of failing on the first try.
        spec["launcherCreationPolicy"] = "WaitForWorkersReady"
        worker_labels = {**labels, names.ROLE_LABEL: names.WORKER_ROLE}
        worker = pod_template(
            res, container="worker", command=WORKER_COMMAND[:1], args=WORKER_COMMAND[1:], env=user_env(res),
            gpus=mapping.gpus_per_pod, runs_ranks=True, spread=worker_labels, **common(),
        )
        worker["metadata"]["labels"][names.ROLE_LABEL] = names.WORKER_ROLE
        spec["mpiReplicaSpecs"]["Worker"] = {"replicas": mapping.workers, "restartPolicy": "OnFailure",
                                             "template": worker}
    metadata = names.object_meta(meta, name, per_run=True)
    metadata["labels"] = {**res.run.labels, **metadata["labels"]}  # type: ignore[dict-item]
    if res.run.queue_name:
        metadata["labels"][KUEUE_QUEUE_LABEL] = res.run.queue_name  # type: ignore[index]
    metadata["annotations"] = dict(res.run.annotations)
    return {"apiVersion": MPIJOB_API_VERSION, "kind": "MPIJob", "metadata": metadata, "spec": spec}


def _scheduling_policy(res: Resource) -> dict[str, Any]:
    """runPolicy.schedulingPolicy; the MPI Operator makes a Volcano or coscheduler PodGroup from it."""
    p = res.run.scheduling_policy
    if p is None:
        return {}
    out: dict[str, Any] = {}
    for key, value in (("minAvailable", p.min_available), ("queue", p.queue), ("priorityClass", p.priority_class),
                       ("scheduleTimeoutSeconds", p.schedule_timeout_seconds)):
        if value is not None:
            out[key] = value
    return out


def in_place_fields(res: Resource) -> dict[str, Any]:
    """What a run takes without restarting (resources.defaults.IN_PLACE_FIELDS), as the MPIJob holds it:
    {"suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished", "tolerations"}. With a Kueue queue, Kueue
    owns suspend."""
    out: dict[str, Any] = {
        "activeDeadlineSeconds": res.run.active_deadline_seconds,
        "ttlSecondsAfterFinished": res.run.ttl_seconds_after_finished,
        "tolerations": tolerations(res.run) or None,
    }
    if not res.run.queue_name:
        out["suspend"] = res.run.suspend
    return out


def in_place_of(job: Mapping[str, Any]) -> dict[str, Any]:
    """The same fields read from an existing MPIJob."""
    spec = job.get("spec") or {}
    policy = spec.get("runPolicy") or {}
    launcher = (((spec.get("mpiReplicaSpecs") or {}).get("Launcher") or {}).get("template") or {}).get("spec") or {}
    return {"activeDeadlineSeconds": policy.get("activeDeadlineSeconds"),
            "ttlSecondsAfterFinished": policy.get("ttlSecondsAfterFinished"),
            "tolerations": launcher.get("tolerations") or None,
            "suspend": bool(policy.get("suspend"))}


def in_place_patch(job: Mapping[str, Any], wanted: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """A JSON merge patch bringing `job` to `wanted` (in_place_fields), or None when it already matches."""
    have = in_place_of(job)
    changed = {k: v for k, v in wanted.items() if have.get(k) != v}
    if not changed:
        return None
    spec: dict[str, Any] = {}
    policy = {k: changed[k] for k in ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished") if k in changed}
    if "suspend" in policy and not policy["suspend"]:
        policy["suspend"] = False
    if policy:
        spec["runPolicy"] = policy
    if "tolerations" in changed:
        replicas = (job.get("spec") or {}).get("mpiReplicaSpecs") or {}
        spec["mpiReplicaSpecs"] = {role: {"template": {"spec": {"tolerations": changed["tolerations"]}}}
                                   for role in replicas}
    return {"spec": spec}


def disruption_budget(res: Resource, name: str, pods: int) -> dict[str, Any]:
    """A PodDisruptionBudget keeping every pod of the run: an MPI gang loses the whole attempt with any one pod, so a
    node drain (an eviction) waits for the run to end instead. Named like the run's MPIJob; the operator deletes it
    when the attempt ends. Involuntary losses (a node failing) are what spec.retryLimit is for."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": names.object_meta(res.meta, name, per_run=True),
        "spec": {"minAvailable": pods, "selector": {"matchLabels": names.run_labels(res.meta)}},
    }


def plan_run(res: Resource, spec_text: Optional[str], upstream: Optional[OutputLocation] = None,
             remove: Sequence[str] = (), attempt: int = 1) -> RunPlan:
    """Everything one run of `res` creates. `spec_text` is the resource's text (inline or from its
    ConfigMap); `upstream` is the promoted output of a referenced Train/Prune (None for a path reference);
    `remove`: old runs' folders (as the pods see them) its launcher deletes before the run starts; `attempt`:
    which attempt of the run this is (its MPIJob's name and label; spec.retryLimit)."""
    res = identify(res, spec_text, upstream)
    experiment = validate_spec_text(res, spec_text)
    ref = model_ref_of(res)
    model = model_source(ref, upstream) if ref is not None else None
    if model is not None and model.path.startswith(S3_SCHEME) and res.run.storage is None:
        assert ref is not None
        field = "spec.pretrainedModel" if isinstance(res, TrainResource) else "spec.model"
        raise InvalidSpec(f"the model ({model.path}) is in object storage: set spec.storage (the endpoint "
                          "and the credentials' Secret)", field)
    mapping = gpu_mapping(res, experiment)
    if isinstance(res, TrainResource) and model is not None:
        spec_text = with_pretrained_model(spec_text or "", model.path, res.meta, spec_text_field(res))
    if isinstance(res, TrainResource) and experiment is None:
        raise InvalidSpec("a ClassificationTrain needs spec text", "spec.experimentSpec")

    service_account, objects = _rbac(res)
    configmap = None
    if spec_text is not None:
        configmap = names.configmap_name(res.meta)
        objects.append({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": names.object_meta(res.meta, configmap, per_run=True),
            "data": {SPEC_FILE: spec_text},
        })
    job_name = names.mpijob_name(res.meta, attempt=attempt)
    output = output_location(res, experiment)
    job = _mpijob(res, mapping, job_name, configmap, model, service_account, output, remove)
    job["metadata"]["labels"][names.ATTEMPT_LABEL] = str(attempt)
    job["metadata"]["annotations"][OUTPUT_ANNOTATION] = encode_output(output)
    if model is not None:
        job["metadata"]["annotations"][INPUT_MODEL_ANNOTATION] = model.path
    if res.run.disruption_budget:
        objects.append(disruption_budget(res, job_name, 1 + (0 if mapping.launcher_as_worker else mapping.workers)))
    objects.append(job)  # last: the reconciler mirrors it
    return RunPlan(
        resource=res,
        mapping=mapping,
        experiment=experiment,
        spec_text=spec_text,
        model=model,
        output=output,
        mpijob_name=job_name,
        objects=objects,
    )
