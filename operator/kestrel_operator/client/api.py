"""KestrelClient: submit, follow, wait for, read the logs of, list and delete runs, from a laptop's kubeconfig.

    from kestrel_operator.client import KestrelClient
    client = KestrelClient(namespace="team-a")
    client.train("spec.txt", name="fashion", data_pvc="fashion-data", results_pvc="results", gpus=1)
    outcome = client.wait("fashion", timeout=3600)        # Outcome(phase="Succeeded", ..., exit_code=0)
    for line in client.logs("fashion"): print(line)      # the launcher's log: rank 0's lines

All API calls go through kube.KubeApi (KUBECONFIG or ~/.kube/config); nothing here draws on a terminal (follow.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from kestrel_operator import API_VERSION
from kestrel_operator.client import build
from kestrel_operator.kube import KubeApi, KubeError, current_namespace
from kestrel_operator.resources import InvalidSpec
from kestrel_operator.resources.types import FAILED, KINDS, SUCCEEDED, TASKS
from kestrel_operator.settings import Settings
from kestrel_operator.status.reasons import INVALID_SPEC

# The MPI Operator's pod labels (v2beta1): which MPIJob a pod belongs to and its role.
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
JOB_ROLE_LABEL = "training.kubeflow.org/job-role"
LAUNCHER_CONTAINER = "launcher"  # manifests/build.py names the launcher's container so
POLL_SECONDS = 2.0
# Exit codes of `kubectl kestrel` (and Outcome.exit_code): the run succeeded; it failed; the request was bad (flags,
# spec file, refused by the API server or the admission webhook, or a resource the operator marked InvalidSpec); the
# outcome is unknown (a wait that timed out, an API server that does not answer).
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_BAD_REQUEST, EXIT_UNKNOWN = 0, 1, 2, 3
# The phase and reason of an Outcome whose resource was deleted while it was followed: the client's own word, never a
# status the operator writes (those are status/reasons.py's).
DELETED = "Deleted"


class NotFound(LookupError):
    """No such resource (or several kinds have that name and none was given)."""


@dataclass(frozen=True)
class Outcome:
    """How a run ended: its phase, the status reason and message (the trainer's one line when it failed)."""

    kind: str
    name: str
    phase: str
    reason: str
    message: str
    status: Mapping[str, Any]

    @property
    def exit_code(self) -> int:
        if self.phase == SUCCEEDED:
            return EXIT_SUCCEEDED
        return EXIT_BAD_REQUEST if self.reason == INVALID_SPEC else EXIT_FAILED


def final(obj: Mapping[str, Any]) -> bool:
    """Has the resource's current spec (its generation) ended Succeeded or Failed? The operator writes Failed only
    when no attempt is left (a retried attempt is Pending/Retrying)."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation") or 0
    return status.get("phase") in (SUCCEEDED, FAILED) and int(status.get("observedGeneration") or 0) >= generation


def outcome_of(obj: Mapping[str, Any]) -> Outcome:
    status = obj.get("status") or {}
    return Outcome(kind=str(obj.get("kind")), name=str((obj.get("metadata") or {}).get("name")),
                   phase=str(status.get("phase") or ""), reason=str(status.get("reason") or ""),
                   message=str(status.get("message") or ""), status=status)


class KestrelClient:
    def __init__(self, namespace: Optional[str] = None, api: Optional[KubeApi] = None,
                 settings: Optional[Settings] = None) -> None:
        self.namespace = namespace or current_namespace()
        self.api = api if api is not None else KubeApi()
        self.settings = settings  # the operator's defaults for the check (None: Settings())

    # -- submit ---------------------------------------------------------------------------------------------
    def submission(self, task: str, spec_file: Optional[str] = None, name: Optional[str] = None,
                   **fields: Any) -> build.Submission:
        """The Submission for `task` (train, prune, export) with the spec file read; InvalidSpec when it cannot be."""
        kind = build.kind_of(task)
        text = None
        if spec_file:
            try:
                text = Path(spec_file).read_text(encoding="utf-8")
            except OSError as err:
                raise InvalidSpec(f"cannot read the spec file {spec_file}: {err.strerror}", "-e") from None
            except UnicodeDecodeError:
                raise InvalidSpec(f"the spec file {spec_file} is not UTF-8 text", "-e") from None
        elif kind == build.TRAIN:
            raise InvalidSpec("a training run needs its spec file (-e SPEC_FILE)", "-e")
        name = name or (build.name_from_file(spec_file) if spec_file else "")
        if not name:
            raise InvalidSpec("no name: give --name (or a spec file whose name makes one)", "--name")
        return build.Submission(kind=kind, name=name, namespace=self.namespace, spec_text=text,
                                spec_file=spec_file or "", **fields)

    def submit(self, sub: build.Submission) -> dict[str, Any]:
        """Check and create the resource; the created object. InvalidSpec for a bad request (refused here, by the
        API server's schema and CEL rules or by the admission webhook, or the name is taken)."""
        sub = replace(sub, namespace=sub.namespace or self.namespace)
        body = build.resource(sub)
        build.check(body, sub.spec_file, self.settings)
        try:
            created = self.api.create(body)
        except KubeError as err:
            if 400 <= err.status < 500:  # 422: schema/CEL or the webhook; 403: RBAC; 400: a malformed object
                raise InvalidSpec(f"the API server refused {sub.kind} {sub.namespace}/{sub.name}: "
                                  f"{_refusal(str(err))}") from None
            raise
        if created is False:
            raise InvalidSpec(f"{sub.kind} {sub.name} already exists in namespace {sub.namespace}: give another "
                              f"--name, or delete it first (kubectl kestrel delete {TASKS[sub.kind]}/{sub.name})",
                              "metadata.name")
        try:
            return self.get(f"{sub.kind}/{sub.name}", namespace=sub.namespace)
        except NotFound:  # deleted at once by someone else: what was sent
            return body

    def train(self, spec_file: str, name: Optional[str] = None, **fields: Any) -> dict[str, Any]:
        return self.submit(self.submission("train", spec_file, name, **fields))

    def prune(self, spec_file: Optional[str] = None, name: Optional[str] = None, **fields: Any) -> dict[str, Any]:
        return self.submit(self.submission("prune", spec_file, name, **fields))

    def export(self, spec_file: Optional[str] = None, name: Optional[str] = None, **fields: Any) -> dict[str, Any]:
        return self.submit(self.submission("export", spec_file, name, **fields))

    # -- read -----------------------------------------------------------------------------------------------
    def _kinds(self, ref: str) -> tuple[list[str], str]:
        word, slash, name = ref.partition("/")
        return ([build.kind_of(word)], name) if slash else (list(KINDS), ref)

    def get(self, ref: str, namespace: Optional[str] = None) -> dict[str, Any]:
        """The resource `ref` names: NAME, or KIND/NAME (train/NAME, ctrain/NAME, ClassificationTrain/NAME)."""
        kinds, name = self._kinds(ref)
        ns = namespace or self.namespace
        found = [obj for kind in kinds if (obj := self.api.get(API_VERSION, kind, ns, name)) is not None]
        if not found:
            raise NotFound(f"no {' or '.join(kinds) if len(kinds) < 3 else 'Classification run'} named {name} in "
                           f"namespace {ns}")
        if len(found) > 1:
            kinds_found = ", ".join(f"{TASKS[o['kind']]}/{name}" for o in found)
            raise NotFound(f"{name} names several runs in namespace {ns}: say which, as {kinds_found}")
        obj = found[0]
        obj.setdefault("kind", kinds[0] if len(kinds) == 1 else obj.get("kind"))
        return obj

    def list(self, kind: Optional[str] = None, all_namespaces: bool = False) -> list[dict[str, Any]]:
        kinds = [build.kind_of(kind)] if kind else list(KINDS)
        ns = "" if all_namespaces else self.namespace
        return [obj for k in kinds for obj in self.api.list(API_VERSION, k, ns)]

    def delete(self, ref: str) -> dict[str, Any]:
        """Delete the resource (its MPIJob and pods go with it); the object as it was."""
        obj = self.get(ref)
        meta = obj["metadata"]
        if not self.api.delete(API_VERSION, obj["kind"], meta["namespace"], meta["name"], meta.get("uid", "")):
            raise NotFound(f"{obj['kind']} {meta['name']} is already gone")
        return obj

    # -- follow ---------------------------------------------------------------------------------------------
    def wait(self, ref: str, timeout: Optional[float] = None, on_update: Optional[Callable[[dict], None]] = None,
             poll: Optional[float] = None) -> Outcome:
        """Poll until the run ends; `on_update(obj)` sees every read. TimeoutError after `timeout` seconds; NotFound
        when there is no such resource; a resource deleted meanwhile is an Outcome of phase Deleted. Stopping the
        wait (Ctrl-C) leaves the run alone."""
        poll = POLL_SECONDS if poll is None else poll
        deadline = None if timeout is None else time.monotonic() + timeout
        kinds, _ = self._kinds(ref)
        seen: Optional[dict[str, Any]] = None
        while True:
            try:
                obj = self.get(ref)
            except NotFound:
                if seen is None:
                    raise
                return replace(outcome_of(seen), phase=DELETED, reason=DELETED,
                               message="the resource was deleted while it was followed")
            seen = obj
            if len(kinds) > 1:  # pin the kind: a namesake of another kind created later changes nothing
                ref = f"{obj['kind']}/{obj['metadata']['name']}"
                kinds = [obj["kind"]]
            if on_update is not None:
                on_update(obj)
            if final(obj):
                return outcome_of(obj)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{obj['kind']} {obj['metadata']['name']} has not finished after {timeout:g} s "
                                   f"(phase {(obj.get('status') or {}).get('phase') or 'none yet'})")
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    def launcher_pods(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The launcher pods of the run's current attempt (status.mpiJobName), oldest first: its log has rank 0's
        lines (mpirun forwards the ranks' output)."""
        job = (obj.get("status") or {}).get("mpiJobName")
        if not job:
            return []
        pods = self.api.list("v1", "Pod", obj["metadata"]["namespace"],
                             f"{JOB_NAME_LABEL}={job},{JOB_ROLE_LABEL}=launcher")
        return sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))

    def logs(self, ref: str, follow: bool = False, tail: Optional[int] = None) -> Iterator[str]:
        """The launcher's log of the run's current attempt (NotFound when it has no launcher pod, yet or any more)."""
        obj = self.get(ref)
        pods = self.launcher_pods(obj)
        if not pods:
            raise NotFound(f"{obj['kind']} {obj['metadata']['name']} has no launcher pod (phase "
                           f"{(obj.get('status') or {}).get('phase') or 'none yet'}; finished runs' pods go after "
                           "ttlSecondsAfterFinished)")
        pod = pods[-1]["metadata"]
        yield from self.api.pod_log(pod["namespace"], pod["name"], LAUNCHER_CONTAINER, follow=follow, tail_lines=tail)

    def stream_logs(self, ref: str, emit: Callable[[str], None], stop: threading.Event,
                    poll: Optional[float] = None) -> None:
        """Emit the log of every launcher the run starts (a retried attempt has its own), each once, from its first
        line, until `stop` is set: then one last pass reads what it has not read yet (a run that ended before its
        first pass). For a thread: API errors end nothing, they are retried."""
        poll = POLL_SECONDS if poll is None else poll
        streamed: set[str] = set()
        while True:
            last = stop.is_set()
            try:
                for pod in self.launcher_pods(self.get(ref)):
                    meta = pod["metadata"]
                    if meta.get("uid") in streamed or not _started(pod):
                        continue
                    streamed.add(meta.get("uid"))
                    for line in self.api.pod_log(meta["namespace"], meta["name"], LAUNCHER_CONTAINER, follow=True):
                        emit(line)
            except (KubeError, NotFound):
                pass
            if last:
                return
            stop.wait(poll)


def _started(pod: Mapping[str, Any]) -> bool:
    """Has the launcher container started (its log can be read)?"""
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        if cs.get("name") == LAUNCHER_CONTAINER:
            state = cs.get("state") or {}
            return bool(state.get("running") or state.get("terminated"))
    return False


def _refusal(message: str) -> str:
    """The API server's message without the client's request prefix (`create ... : HTTP 422: `)."""
    head, sep, rest = message.partition(": HTTP ")
    return rest.split(": ", 1)[-1] if sep else message
