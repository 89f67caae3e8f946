"""One reconcile pass for one resource: read, build, adopt, apply, patch status, post events.

Level-triggered and idempotent: it looks at what exists (by deterministic names and labels) and does
only what is missing, so running it twice, concurrently, or after an operator restart changes nothing
the second time. It talks to the API only through `api` (kube.KubeApi, or an in-memory double in tests).

A new `metadata.generation` (any change to `spec`) supersedes the running run: its MPIJob and spec
ConfigMap are deleted and a new run named `<name>-g<generation>` starts (GitOps retraining).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from kestrel_operator.manifests import names
from kestrel_operator.manifests.build import (
    INPUT_MODEL_ANNOTATION,
    MPIJOB_API_VERSION,
    OUTPUT_ANNOTATION,
    decode_output,
    model_ref_of,
    plan_run,
)
from kestrel_operator.manifests.outputs import OutputLocation
from kestrel_operator.resources import InvalidSpec, parse_resource
from kestrel_operator.resources.types import Resource
from kestrel_operator.settings import Settings
from kestrel_operator.status import compute
from kestrel_operator.status.phase import FAILED, SUCCEEDED, phase_of
from kestrel_operator.status.trainer_error import trainer_error

log = logging.getLogger(__name__)
# Labels the MPI Operator (v2beta1 controller) puts on the pods it creates.
MPI_JOB_NAME_LABEL = "training.kubeflow.org/job-name"
MPI_JOB_ROLE_LABEL = "training.kubeflow.org/job-role"



class Api(Protocol):
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Optional[dict[str, Any]]: ...
    def list(self, api_version: str, kind: str, namespace: str, label_selector: str = "") -> list[dict]: ...
    def create(self, obj: Mapping[str, Any]) -> bool: ...
    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str = "") -> bool: ...
    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, uid: str,
                     status_patch: Mapping[str, Any]) -> bool: ...
    def post_event(self, involved: Mapping[str, Any], etype: str, reason: str, message: str) -> None: ...


@dataclass
class Outcome:
    """What one pass did: the status patch (None if nothing changed) and the events it posted."""

    status_patch: Optional[dict[str, Any]] = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class Reconciler:
    def __init__(self, api: Api, settings: Settings) -> None:
        self.api = api
        self.settings = settings

    # -- helpers ---------------------------------------------------------------------------------
    def _event(self, body: Mapping[str, Any], out: Outcome, etype: str, reason: str, message: str) -> None:
        out.events.append((etype, reason, message))
        self.api.post_event(body, etype, reason, message)

    def _finish(self, body: Mapping[str, Any], old: Mapping[str, Any], patch: dict[str, Any], out: Outcome) -> Outcome:
        transition = compute.transition_event(old, patch)
        if transition is not None:
            self._event(body, out, *transition)
        if compute.differs(old, patch):
            meta = body["metadata"]
            self.api.patch_status(body["apiVersion"], body["kind"], meta["namespace"], meta["name"],
                                  meta.get("uid", ""), patch)
            out.status_patch = patch
        return out

    def _supersede_old_runs(self, body: Mapping[str, Any], res: Resource, out: Outcome) -> None:
        """Delete MPIJobs and spec ConfigMaps of other generations (restart on spec change)."""
        meta = res.meta
        selector = _selector(names.owner_labels(meta))
        for api_version, kind in ((MPIJOB_API_VERSION, "MPIJob"), ("v1", "ConfigMap")):
            for obj in self.api.list(api_version, kind, meta.namespace, selector):
                m = obj.get("metadata") or {}
                gen = (m.get("labels") or {}).get(names.GENERATION_LABEL)
                if gen is None or gen == str(meta.generation) or not _owned_by(obj, meta.uid):
                    continue
                if self.api.delete(api_version, kind, meta.namespace, m["name"], m.get("uid", "")):
                    out.deleted.append(f"{kind}/{m['name']}")
                    if kind == "MPIJob":
                        self._event(body, out, "Normal", "SpecChanged",
                                    f"spec changed (generation {meta.generation}): deleted MPIJob {m['name']} "
                                    f"of generation {gen}; a new run starts")

    def _spec_text(self, res: Resource) -> tuple[Optional[str], Optional[str]]:
        """(text, None) or (None, why it is missing)."""
        run = res.run
        if run.experiment_spec is not None:
            return run.experiment_spec, None
        ref = run.experiment_spec_ref
        if ref is None:
            return None, None
        cm = self.api.get("v1", "ConfigMap", res.meta.namespace, ref.name)
        if cm is None:
            return None, f"spec.experimentSpecRef: ConfigMap {ref.name} not found"
        text = (cm.get("data") or {}).get(ref.key)
        if text is None:
            return None, f"spec.experimentSpecRef: ConfigMap {ref.name} has no key {ref.key!r}"
        return text, None

    def _upstream(self, res: Resource) -> tuple[Optional[OutputLocation], Optional[tuple[str, str]]]:
        """The referenced resource's output, or (None, (reason, message)) to wait."""
        ref = model_ref_of(res)
        if ref is None or ref.source_kind is None:
            return None, None
        src = self.api.get(res.meta.api_version, ref.source_kind, res.meta.namespace, ref.source_name or "")
        what = f"{ref.source_kind} {ref.source_name}"
        if src is None:
            return None, ("WaitingForModel", f"waiting for {what}: not found")
        status = src.get("status") or {}
        phase = status.get("phase") or "Pending"
        if phase == FAILED:
            return None, ("ModelSourceFailed", f"{what} failed ({status.get('reason')}): {status.get('message')}")
        loc = OutputLocation.from_status(status) if phase == SUCCEEDED else None
        if loc is None or status.get("observedGeneration") != (src.get("metadata") or {}).get("generation"):
            return None, ("WaitingForModel", f"waiting for {what} to succeed (now {phase})")
        return loc, None

    # -- the pass --------------------------------------------------------------------------------
    def reconcile(self, body: Mapping[str, Any], now: Optional[str] = None) -> Outcome:
        now = now or utcnow()
        out = Outcome()
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return out  # the garbage collector removes what it owns
        old = body.get("status") or {}
        generation = int(meta.get("generation") or 1)
        try:
            res = parse_resource(body, self.settings)
        except InvalidSpec as err:
            return self._finish(body, old, compute.invalid_status(old, generation, err.message, now), out)

        self._supersede_old_runs(body, res, out)
        job_name = names.mpijob_name(res.meta)
        job = self.api.get(MPIJOB_API_VERSION, "MPIJob", res.meta.namespace, job_name)
        if job is not None and not _owned_by(job, res.meta.uid):
            patch = compute.waiting_status(old, generation, "NameConflict",
                                           f"MPIJob {job_name} exists and is not owned by this resource")
            return self._finish(body, old, patch, out)

        if job is None:
            text, missing = self._spec_text(res)
            if missing:
                return self._finish(body, old, compute.waiting_status(old, generation, "SpecNotFound", missing), out)
            upstream, wait = self._upstream(res)
            if wait:
                return self._finish(body, old, compute.waiting_status(old, generation, *wait), out)
            try:
                plan = plan_run(res, text, upstream)
            except InvalidSpec as err:
                return self._finish(body, old, compute.invalid_status(old, generation, err.message, now), out)
            for obj in plan.objects:
                if self.api.create(obj):
                    out.created.append(f"{obj['kind']}/{obj['metadata']['name']}")
            m = plan.mapping
            self._event(body, out, "Normal", "MPIJobCreated",
                        f"created MPIJob {job_name}: {m.ranks} rank(s) x {m.gpus_per_rank} GPU(s), "
                        f"{max(m.workers, 1)} pod(s) with {m.gpus_per_pod} GPU(s) each")
            job = self.api.get(MPIJOB_API_VERSION, "MPIJob", res.meta.namespace, job_name)

        annotations = ((job or {}).get("metadata") or {}).get("annotations") or {}
        error = self._trainer_error(res.meta.namespace, job_name) if phase_of(job).phase == FAILED else None
        patch = compute.run_status(old, generation, job, job_name, decode_output(annotations.get(OUTPUT_ANNOTATION)),
                                   annotations.get(INPUT_MODEL_ANNOTATION), now, error)
        return self._finish(body, old, patch, out)

    def _trainer_error(self, namespace: str, job_name: str) -> Optional[str]:
        """The failed run's trainer error line, from its launcher pods (labelled by the MPI Operator)."""
        pods = self.api.list("v1", "Pod", namespace, _selector({MPI_JOB_NAME_LABEL: job_name,
                                                                MPI_JOB_ROLE_LABEL: "launcher"}))
        return trainer_error(pods)

    def dependents(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Resources in the namespace that wait for `body`'s model (re-reconciled when it succeeds)."""
        meta = body.get("metadata") or {}
        key = {"ClassificationTrain": "fromTrain", "ClassificationPrune": "fromPrune"}.get(body.get("kind", ""))
        if key is None:
            return []
        found = []
        for kind, field_name in (("ClassificationTrain", "pretrainedModel"), ("ClassificationPrune", "model"),
                                 ("ClassificationExport", "model")):
            for obj in self.api.list(body["apiVersion"], kind, meta["namespace"]):
                ref = (obj.get("spec") or {}).get(field_name) or {}
                if ref.get(key) == meta.get("name") and (obj.get("status") or {}).get("mpiJobName") is None:
                    found.append(obj)
        return found
