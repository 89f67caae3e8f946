"""Why a run's pods do not get going, read from the pods themselves (and their Events for volumes).

An MPIJob says `Created` for as long as its pods cannot be scheduled, cannot pull the image, cannot
find the key Secret or cannot attach a volume; the pods say why. Each cause becomes a status reason
(`reasons.py`) and a message naming the pod, quoting Kubernetes, and saying what the user should do.
Pure: the reconciler lists the pods (and, only for pods stuck creating containers, their Events).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from kestrel_operator.status import reasons as r
from kestrel_operator.status.trainer_error import error_line
from kestrel_trainer.spec.contract import PREEMPTED_EXIT_CODE, STOPPED_MESSAGE

IMAGE_PULL_WAITING = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
LAUNCHER_CONTAINER = "launcher"
WORKER_CONTAINER = "worker"
_CLAIM_NOT_FOUND = re.compile(r'persistentvolumeclaim "([^"]+)" not found')
MAX_MESSAGE = 900
# The DisruptionTarget reason of a pod the taint-eviction controller deletes: its node has a NoExecute taint the pod no
# longer tolerates, normally node.kubernetes.io/unreachable or not-ready once the pod's toleration ran out.
TAINT_EVICTION = "DeletionByTaintManager"


@dataclass(frozen=True)
class Cause:
    reason: str
    message: str


def _name(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", "?"))


def _containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _condition(pod: Mapping[str, Any], ctype: str) -> Optional[Mapping[str, Any]]:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == ctype), None)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def _unschedulable(pod: Mapping[str, Any]) -> Optional[Cause]:
    cond = _condition(pod, "PodScheduled")
    if cond is None or cond.get("status") != "False" or cond.get("reason") != "Unschedulable":
        return None
    said = str(cond.get("message") or "")
    missing = _CLAIM_NOT_FOUND.search(said)
    if missing:
        return Cause(r.VOLUME_CLAIM_MISSING,
                     f"pod {_name(pod)} cannot start: PersistentVolumeClaim {missing.group(1)} does not exist. "
                     "Create it (spec.volumes names it) or fix the claimName; the run starts when it is bound.")
    return Cause(r.UNSCHEDULABLE,
                 f"pod {_name(pod)} cannot be scheduled: {said} Free or add nodes with these resources, or lower "
                 "spec.gpus / spec.resources, or fix nodeSelector, tolerations and affinity.")


def _waiting(pod: Mapping[str, Any], key_secret: str, image: str) -> Optional[Cause]:
    for cs in _containers(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        why, said = waiting.get("reason"), str(waiting.get("message") or "")
        if why in IMAGE_PULL_WAITING:
            return Cause(r.IMAGE_PULL_BACKOFF,
                         f"pod {_name(pod)} cannot pull image {cs.get('image') or image}: {why}: {said} Check "
                         "spec.image and spec.imagePullSecrets (the registry and the Secret must be reachable).")
        if why == "CreateContainerConfigError":
            if key_secret and (f'"{key_secret}"' in said or f"/{key_secret}" in said):
                return Cause(r.KEY_SECRET_MISSING,
                             f"pod {_name(pod)} cannot start: {said}. Create the Secret named in spec.keySecretRef "
                             f"({key_secret}) with the model key under the key spec.keySecretRef.key; the pod "
                             "starts by itself once it exists.")
            return Cause(r.CREATE_CONTAINER_CONFIG_ERROR,
                         f"pod {_name(pod)} cannot start: {said}. Create what it names (a Secret or ConfigMap "
                         "from spec.env, or spec.storage.s3.secretRef's Secret with AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY); the pod starts by itself once it exists.")
        if why == "CrashLoopBackOff" and cs.get("name") == WORKER_CONTAINER:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            exit_said = f"exit code {last.get('exitCode')} ({last.get('reason') or 'Error'})" if last else said
            detail = f": {last['message']}" if last.get("message") else ""
            return Cause(r.WORKER_CRASH_LOOP,
                         f"worker {_name(pod)} keeps crashing ({cs.get('restartCount', 0)} restarts, last "
                         f"{exit_said}{detail}). Its sshd must start from the trainer image's /home/kestrel/"
                         f".sshd_config: check the image (kubectl logs {_name(pod)} --previous).")
    return None


def _evicted(pod: Mapping[str, Any]) -> Optional[Cause]:
    status = pod.get("status") or {}
    if status.get("phase") == "Failed" and status.get("reason") == "Evicted":
        return Cause(r.WORKER_EVICTED,
                     f"pod {_name(pod)} was evicted: {status.get('message') or 'no message'} The MPI Operator "
                     "(v0.8) fails the attempt when a worker is evicted; if it keeps happening, give the pods more "
                     "memory or ephemeral storage in spec.resources, or a higher priorityClassName.")
    return None


def lost_to_node(pod: Mapping[str, Any]) -> bool:
    """Evicted from its node by the taint-eviction controller. On a node that stopped answering, the pod's object
    then stays Terminating (no kubelet confirms the stop) until the node returns or its Node object is deleted."""
    cond = _condition(pod, "DisruptionTarget")
    return bool(cond and cond.get("status") == "True" and cond.get("reason") == TAINT_EVICTION)


def node_lost(pods: Iterable[Mapping[str, Any]]) -> Optional[Cause]:
    """A pod of the attempt lost with its node: the ranks on the other nodes wait for it forever (its peers see no
    connection close when a node dies), so the attempt cannot finish and is ended and started again."""
    lost = next((p for p in pods if lost_to_node(p)), None)
    if lost is None:
        return None
    node = (lost.get("spec") or {}).get("nodeName") or "?"
    said = str((_condition(lost, "DisruptionTarget") or {}).get("message") or "")
    return Cause(r.NODE_LOST, _clip(f"pod {_name(lost)} was evicted from node {node}, which stopped answering or was "
                                    f"tainted NoExecute ({said or TAINT_EVICTION}); the attempt cannot finish without "
                                    "it."))


def stuck_creating(pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """Scheduled pods whose containers are still being created: their Events say why (volumes)."""
    out = []
    for pod in pods:
        status = pod.get("status") or {}
        if status.get("phase") != "Pending" or not (pod.get("spec") or {}).get("nodeName"):
            continue
        states = [((cs.get("state") or {}).get("waiting") or {}).get("reason") for cs in _containers(pod)]
        if not states or all(s == "ContainerCreating" for s in states):
            out.append(_name(pod))
    return out


def _volume_event(events: Sequence[Mapping[str, Any]]) -> Optional[Cause]:
    """The newest FailedAttachVolume / FailedMount Warning among `events` (of pods stuck creating)."""
    volume = [e for e in events if e.get("reason") in ("FailedAttachVolume", "FailedMount")]
    if not volume:
        return None
    latest = max(volume, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    pod = (latest.get("involvedObject") or {}).get("name", "?")
    said = str(latest.get("message") or "")
    if "Multi-Attach" in said:
        return Cause(r.VOLUME_MULTI_ATTACH,
                     f"pod {pod} waits for a volume attached to another node: {said} A ReadWriteOnce volume "
                     "can serve one node: use a ReadWriteMany claim for multi-pod runs, or stop the other pod.")
    return Cause(r.VOLUME_MOUNT_FAILED, f"pod {pod} cannot mount a volume: {said} Check the claims in "
                                        "spec.volumes and the storage driver.")


def pod_cause(pods: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]], key_secret: str,
              image: str) -> Optional[Cause]:
    """The most telling reason the run's pods are stuck, or None when nothing is wrong with them."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    for check in (_unschedulable, lambda p: _waiting(p, key_secret, image), _evicted):
        for pod in live:
            cause = check(pod)
            if cause is not None:
                return Cause(cause.reason, _clip(cause.message))
    cause = _volume_event(events)
    return Cause(cause.reason, _clip(cause.message)) if cause else None


def failure_cause(pods: Sequence[Mapping[str, Any]]) -> Optional[Cause]:
    """Why a run's attempt failed, when its pods tell: an evicted worker, a pod lost with its node, the trainer's own
    error, or a launcher that ended without one (a rank lost: pod deleted, or a graceful stop)."""
    found = next((c for c in map(_evicted, pods) if c is not None), None) or node_lost(pods) or trainer_failure(pods)
    return Cause(found.reason, _clip(found.message)) if found else None


def _tail(lines: Sequence[str], n: int = 3) -> str:
    """The last `n` lines that say something (mpirun frames its messages with lines of dashes), joined."""
    kept = [ln.strip() for ln in lines if ln.strip().strip("-=*")]
    return " | ".join(kept[-n:])


def trainer_failure(pods: Sequence[Mapping[str, Any]]) -> Optional[Cause]:
    """The failed launcher's termination message (the tail of its log, FallbackToLogsOnError): the trainer's
    one-line error is TrainerFailed (bad input: running it again cannot help); a stop by signal (exit 143, the
    trainer checkpointed) is RunStopped, and so is the stop's own line whatever mpirun's code (it may lose a stopped
    worker pod's daemon before the ranks' 143 reach it); no error line at all is RankLost (mpirun lost a rank)."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") != LAUNCHER_CONTAINER or not term or term.get("exitCode") in (0, None):
                continue
            message = str(term.get("message") or "")
            said = message.strip().splitlines()
            code, logs = term["exitCode"], f"kubectl logs {_name(pod)}"
            line = error_line(message)
            if code == PREEMPTED_EXIT_CODE or (line is not None and STOPPED_MESSAGE.search(line)):
                return Cause(r.RUN_STOPPED, _clip(f"the trainer was stopped by a signal (exit {code}) and "
                                                  f"checkpointed: {line or (said[-1] if said else '')} ({logs})"))
            if line is None:
                last = _tail(said) or f"no message ({term.get('reason') or 'Error'})"
                return Cause(r.RANK_LOST, _clip(f"the launcher exited with code {code} without the trainer's error "
                                                f"line (a rank or its pod was lost): {last} ({logs})"))
            return Cause(r.TRAINER_FAILED,
                         _clip(f"the trainer exited with code {code}: {line}. Fix the cause, then "
                               f"edit the resource to start a new run ({logs})."))
    return None
