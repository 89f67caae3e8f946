"""One reconcile pass for one resource: read, build, adopt, apply, patch status, post events.

Level-triggered and idempotent: it looks at what exists (by deterministic names and labels) and does
only what is missing, so running it twice, concurrently, or after an operator restart changes nothing
the second time. It talks to the API only through `api` (kube.KubeApi, or an in-memory double in tests).

Runs and spec edits. A run is identified by its run hash (manifests/runs.py: the spec without the fields
taken in place, the spec text, the upstream's promoted run), labelled on its MPIJob, and works in its own
folder <results>/runs/<run hash>:
- an edit that keeps the hash is applied to the running MPIJob in place (no restart);
- any other edit stops the old run (its MPIJob is deleted) and starts `<name>-<task>-g<generation>` in a new
  folder only once every pod of the old run is gone; the old run's files stay;
- an edit back to a spec whose run succeeded (a revert) takes that run's result back with no pod
  (status.runs, the history, bounded by spec.keepRuns: older runs' folders are removed by the next run);
- a run that succeeds passes the promotion gate or not; only a promoted run is what dependents read, and a
  new promoted run re-runs them (their run hash includes it);
- an edit the operator rejects (InvalidSpec) stops the old run too: status and cluster agree.
A finished run whose MPIJob is removed (ttlSecondsAfterFinished) keeps its result; an unfinished one is
started again.

An API error is recorded in status (reason APIError, or MPIJobCRDMissing) with an Event, then raised:
the work queue retries the key with backoff.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from kestrel_operator.kube import KubeError
from kestrel_operator.manifests import names
from kestrel_operator.manifests.build import (
    INPUT_MODEL_ANNOTATION,
    MPIJOB_API_VERSION,
    OUTPUT_ANNOTATION,
    decode_output,
    identify,
    in_place_fields,
    in_place_patch,
    model_ref_of,
    plan_run,
)
from kestrel_operator.manifests.outputs import OutputLocation
from kestrel_operator.manifests.runs import run_dir
from kestrel_operator.resources import InvalidSpec, parse_meta, parse_resource
from kestrel_operator.resources.types import Promotion, Resource, ResourceMeta, TrainResource
from kestrel_operator.settings import Settings
from kestrel_operator.status import compute, runs
from kestrel_operator.status import reasons as r
from kestrel_operator.status.phase import FAILED, SUCCEEDED, held_by_kueue, kueue_says, phase_of
from kestrel_operator.status.pods import Cause, failure_cause, lost_to_node, node_lost, pod_cause, stuck_creating

log = logging.getLogger(__name__)

# Come back this soon while an old run's pods terminate, or while pods wait on volumes (their Events
# change without the pod changing).
OLD_RUN_POLL_SECONDS = 2.0
PDB_API_VERSION = "policy/v1"
STUCK_POLL_SECONDS = 15.0
# Kueue's Workload of a queued MPIJob (found by the MPIJob's uid label); Workloads are not watched, so while
# Kueue has not yet said why it holds the MPIJob the pass comes back this soon (Kueue writes it within seconds).
KUEUE_API_VERSION = "kueue.x-k8s.io/v1beta2"
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
QUEUE_POLL_SECONDS = 3.0
QUEUE_POLL_WINDOW_SECONDS = 120.0


class Api(Protocol):
    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Optional[dict[str, Any]]: ...
    def list(self, api_version: str, kind: str, namespace: str, label_selector: str = "",
             field_selector: str = "") -> list[dict]: ...
    def create(self, obj: Mapping[str, Any]) -> str | bool: ...
    def patch(self, api_version: str, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> bool: ...
    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str = "",
               grace_seconds: Optional[int] = None) -> bool: ...
    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, uid: str,
                     status_patch: Mapping[str, Any]) -> str | bool: ...
    def post_event(self, involved: Mapping[str, Any], etype: str, reason: str, message: str) -> None: ...


@dataclass
class Outcome:
    """What one pass did: the status patch (None if nothing changed), the events it posted, and what the
    work queue should do next (come back after `requeue_after`, watch a ConfigMap, wake dependents)."""

    status_patch: Optional[dict[str, Any]] = None
    events: list[tuple[str, str, str]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    requeue_after: Optional[float] = None
    waits_for_configmap: Optional[str] = None  # the spec ConfigMap it reads: an edit of it wakes the resource
    succeeded: bool = False
    promoted: bool = False  # the promoted run changed: dependents follow it
    # resourceVersions this pass wrote, with the resource's generation it reconciled (None for MPIJobs it
    # created): a watch event of exactly that version and generation carries nothing new.
    written: list[tuple[str, Optional[int]]] = field(default_factory=list)


class NameConflict(Exception):
    """An object with one of our deterministic names exists and is not ours."""


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _seconds_between(earlier: str, later: str) -> float:
    """Seconds from one API timestamp (RFC 3339, UTC, whole seconds) to another; inf if either does not parse."""
    try:
        start, end = (dt.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ") for t in (earlier, later))
    except ValueError:
        return float("inf")
    return (end - start).total_seconds()


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _of_attempt(pods: Sequence[Mapping[str, Any]], job: Mapping[str, Any],
                roles: tuple[str, ...] = ("launcher", "worker")) -> list[Mapping[str, Any]]:
    """The pods of the attempt that `job` (its MPIJob) runs, by the MPI Operator's names <job>-<role>-...: another
    attempt of the same generation (a retry, or a pod lost with its node, Terminating meanwhile) is not it."""
    prefixes = tuple(f"{_name(job)}-{role}-" for role in roles)
    return [p for p in pods if _name(p).startswith(prefixes)]


def _generation_of(obj: Mapping[str, Any]) -> int:
    try:
        return int(_labels(obj).get(names.GENERATION_LABEL) or 0)
    except ValueError:
        return 0


def _same_run(job: Mapping[str, Any], meta: ResourceMeta) -> bool:
    """Is `job` the run of the resource's current spec? By run hash; an MPIJob made before run hashes
    existed (no label) counts when it is of the current generation, so upgrading the operator restarts
    nothing."""
    labels = _labels(job)
    if names.RUN_HASH_LABEL in labels:
        return labels[names.RUN_HASH_LABEL] == meta.run_hash
    return labels.get(names.GENERATION_LABEL) == str(meta.generation)


def _attempt_of(job: Mapping[str, Any]) -> int:
    try:
        return max(1, int(_labels(job).get(names.ATTEMPT_LABEL) or 1))
    except ValueError:
        return 1


def _retried(reason: str, message: str) -> bool:
    """Can another attempt succeed? Not after the trainer's own error, nor when spec.activeDeadlineSeconds ran
    out (the MPI Operator's DeadlineExceeded)."""
    return reason not in r.NOT_RETRIED and "DeadlineExceeded" not in f"{reason} {message}"


def _gate(res: Resource) -> Optional[Promotion]:
    """spec.promotion (ClassificationTrain only; Prune and Export promote every successful run)."""
    return res.promotion if isinstance(res, TrainResource) else None


def api_error_status(err: KubeError) -> tuple[str, str]:
    """(reason, message) for a failed API call; the message says what to do."""
    if err.kind == "MPIJob" and err.status == 404:
        return r.MPIJOB_CRD_MISSING, (
            f"{err}. The API server does not serve MPIJobs (kubeflow.org/v2beta1): install the Kubeflow MPI "
            "Operator (v0.5 or later) and its CRD; the operator retries with backoff.")
    if err.status in (401, 403):
        return r.API_ERROR, (f"{err}. The operator's ServiceAccount lacks a permission (docs/operator.md, RBAC "
                             "lists what it needs); the operator retries with backoff.")
    return r.API_ERROR, f"{err}. The operator retries with backoff."


class Reconciler:
    def __init__(self, api: Api, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        # Told of each write as it happens (body of the resource, resourceVersion, generation or None), so a
        # watch event for it that arrives while the pass still runs is already known to be ours.
        self.on_write: Optional[Callable[[Mapping[str, Any], str, Optional[int]], None]] = None

    def _wrote(self, body: Mapping[str, Any], out: Outcome, version: str, generation: Optional[int]) -> None:
        out.written.append((version, generation))
        if self.on_write is not None:
            self.on_write(body, version, generation)

    # -- helpers ---------------------------------------------------------------------------------
    def _event(self, body: Mapping[str, Any], out: Outcome, etype: str, reason: str, message: str) -> None:
        out.events.append((etype, reason, message))
        self.api.post_event(body, etype, reason, message)

    def _finish(self, body: Mapping[str, Any], old: Mapping[str, Any], patch: dict[str, Any], out: Outcome) -> Outcome:
        transition = compute.transition_event(old, patch)
        # A Normal transition right after this pass's own Event ("created MPIJob ...") would say it twice.
        if transition is not None and not (transition[0] == "Normal" and out.events):
            self._event(body, out, *transition)
        if compute.differs(old, patch):
            meta = body["metadata"]
            version = self.api.patch_status(body["apiVersion"], body["kind"], meta["namespace"], meta["name"],
                                            meta.get("uid", ""), patch)
            if isinstance(version, str):
                self._wrote(body, out, version, int(meta.get("generation") or 1))
            out.status_patch = patch
        if patch.get("phase") == SUCCEEDED and old.get("phase") != SUCCEEDED:
            out.succeeded = True
        if runs.PROMOTED in patch and patch[runs.PROMOTED] != old.get(runs.PROMOTED):
            out.promoted = True
        return out

    def _owned(self, api_version: str, kind: str, meta: ResourceMeta) -> list[dict[str, Any]]:
        found = self.api.list(api_version, kind, meta.namespace, _selector(names.owner_labels(meta)))
        return [o for o in found if _owned_by(o, meta.uid)]

    def _stop_runs(self, body: Mapping[str, Any], meta: ResourceMeta, jobs: list[dict[str, Any]],
                   keep: Optional[Mapping[str, Any]], why: str, out: Outcome) -> None:
        """Delete every run's MPIJob but `keep` (background: the garbage collector takes their pods).

        The Event goes first: an operator stopped between the two requests leaves the MPIJob to its successor,
        which says it again (at least once), never a stopped run nobody was told about."""
        for job in jobs:
            m = job.get("metadata") or {}
            if job is keep or m.get("deletionTimestamp"):
                continue
            self._event(body, out, "Normal", r.SPEC_CHANGED,
                        f"{why}: stopping run {m['name']} (generation {_labels(job).get(names.GENERATION_LABEL)})")
            if self.api.delete(MPIJOB_API_VERSION, "MPIJob", meta.namespace, m["name"], m.get("uid", "")):
                out.deleted.append(f"MPIJob/{m['name']}")
                self._drop_budget(meta, m["name"], out)

    def _spec_text(self, res: Resource) -> tuple[Optional[str], Optional[str]]:
        """(text, None) or (None, why it is missing)."""
        run = res.run
        if run.experiment_spec is not None:
            return run.experiment_spec, None
        ref = run.experiment_spec_ref
        if ref is None:
            return None, None
        cm = self.api.get("v1", "ConfigMap", res.meta.namespace, ref.name)
        advice = "; the run starts as soon as it does (the operator watches ConfigMaps)"
        if cm is None:
            return None, f"spec.experimentSpecRef: ConfigMap {ref.name} not found: create it{advice}"
        text = (cm.get("data") or {}).get(ref.key)
        if text is None:
            return None, f"spec.experimentSpecRef: ConfigMap {ref.name} has no key {ref.key!r}: add it{advice}"
        return text, None

    def _upstream(self, res: Resource) -> tuple[Optional[OutputLocation], Optional[tuple[str, str]]]:
        """The referenced resource's promoted output, or (None, (reason, message)) to wait. A promoted model is
        used whatever the referenced resource does now (a retrain in progress, or one that missed its gate,
        leaves its dependents on the model they have)."""
        ref = model_ref_of(res)
        if ref is None or ref.source_kind is None:
            return None, None
        src = self.api.get(res.meta.api_version, ref.source_kind, res.meta.namespace, ref.source_name or "")
        what = f"{ref.source_kind} {ref.source_name}"
        if src is None:
            return None, (r.WAITING_FOR_MODEL, f"waiting for {what}: not found (create it, or fix the reference)")
        status = src.get("status") or {}
        loc = OutputLocation.promoted(status)
        if loc is not None:
            return loc, None
        phase = status.get("phase") or "Pending"
        if phase == FAILED:
            return None, (r.MODEL_SOURCE_FAILED, f"{what} failed ({status.get('reason')}): {status.get('message')} "
                                                 f"Fix {what}; this run starts when it has a promoted model.")
        return None, (r.WAITING_FOR_MODEL, f"waiting for {what} to promote a model (now {phase}: "
                                           f"{status.get('message') or status.get('reason') or 'no status yet'})")

    def _apply(self, body: Mapping[str, Any], obj: Mapping[str, Any], meta: ResourceMeta, out: Outcome) -> None:
        """Create `obj`; if it exists and is ours, bring what we manage up to date (RoleBinding subjects,
        Role rules: a changed serviceAccountName must reach the binding), else raise NameConflict."""
        m = obj["metadata"]
        version = self.api.create(obj)
        if version:
            out.created.append(f"{obj['kind']}/{m['name']}")
            if obj["kind"] == "MPIJob" and isinstance(version, str):
                self._wrote(body, out, version, None)
            return
        existing = self.api.get(obj["apiVersion"], obj["kind"], m["namespace"], m["name"])
        if existing is None:
            raise KubeError(f"create {obj['kind']} {m['namespace']}/{m['name']}: exists, then vanished", 409,
                            obj["kind"])
        if not _owned_by(existing, meta.uid):
            raise NameConflict(f"{obj['kind']} {m['name']} exists and is not owned by this resource: delete or "
                               "rename it (the operator never overwrites it)")
        # A run's spec ConfigMap keeps its name within a generation: a dependent's new run (its upstream promoted
        # another model) writes its own text (the pretrained path) into it once the old run's pods are gone.
        managed = {"RoleBinding": "subjects", "Role": "rules", "ConfigMap": "data"}.get(obj["kind"])
        if managed and existing.get(managed) != obj.get(managed):
            self.api.patch(obj["apiVersion"], obj["kind"], m["namespace"], m["name"], {managed: obj[managed]})
            out.updated.append(f"{obj['kind']}/{m['name']}")

    # -- the pass --------------------------------------------------------------------------------
    def reconcile(self, body: Mapping[str, Any], now: Optional[str] = None) -> Outcome:
        """One pass. An API error is recorded in status (best effort) and raised for the retry."""
        now = now or utcnow()
        out = Outcome()
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return out  # the garbage collector removes what it owns
        old = body.get("status") or {}
        generation = int(meta.get("generation") or 1)
        try:
            return self._pass(body, old, generation, now, out)
        except KubeError as err:
            reason, message = api_error_status(err)
            try:
                self._finish(body, old, compute.error_status(old, generation, reason, message, now), out)
            except KubeError as again:
                log.warning("could not record %s in status: %s", reason, again)
            raise

    def _pass(self, body: Mapping[str, Any], old: Mapping[str, Any], generation: int, now: str,
              out: Outcome) -> Outcome:
        try:
            res = parse_resource(body, self.settings)
        except InvalidSpec as err:
            meta = parse_meta(body)
            jobs = self._owned(MPIJOB_API_VERSION, "MPIJob", meta)
            self._stop_runs(body, meta, jobs, None, f"spec is invalid (generation {generation})", out)
            return self._finish(body, old, compute.invalid_status(old, generation, err.message, now), out)

        jobs = self._owned(MPIJOB_API_VERSION, "MPIJob", res.meta)
        live = [j for j in jobs if not (j.get("metadata") or {}).get("deletionTimestamp")]
        if res.run.experiment_spec_ref is not None:  # its text is part of the run: an edit of it starts a new one
            out.waits_for_configmap = res.run.experiment_spec_ref.name
        text, missing = self._spec_text(res)
        upstream, wait = self._upstream(res)
        if missing or wait:
            return self._unidentified(body, res, old, generation, jobs, live, missing, wait, now, out)
        res = identify(res, text, upstream)
        same = [j for j in live if _same_run(j, res.meta)]
        current = max(same, key=_generation_of) if same else None
        self._stop_runs(body, res.meta, jobs, current, f"spec changed (generation {generation})", out)
        rec = runs.find(old, res.meta.run_hash)
        if rec is not None and rec.get("phase") == SUCCEEDED:
            patch = compute.recorded_status(old, generation, rec, now, _gate(res))
            if patch["reason"] == r.RUN_REUSED and old.get("runHash") != rec["runHash"]:
                self._event(body, out, "Normal", r.RUN_REUSED, patch["message"])
            return self._finish(body, old, patch, out)
        if current is None:
            return self._start_run(body, res, old, generation, jobs, text, upstream, now, out)
        current = self._update_in_place(body, res, current, out)
        return self._mirror(body, res, old, generation, current, now, out)

    def _unidentified(self, body: Mapping[str, Any], res: Resource, old: Mapping[str, Any], generation: int,
                      jobs: list[dict[str, Any]], live: list[dict[str, Any]], missing: Optional[str],
                      wait: Optional[tuple[str, str]], now: str, out: Outcome) -> Outcome:
        """The spec text or the upstream model cannot be read now (ConfigMap missing, upstream not promoted or
        gone): a run of this very spec goes on (it has its copy of both); otherwise wait, with no run."""
        meta = res.meta
        same = [j for j in live if _labels(j).get(names.SPEC_HASH_LABEL) == meta.spec_hash]
        current = max(same, key=_generation_of) if same else None
        if current is not None:
            self._stop_runs(body, meta, jobs, current, f"spec changed (generation {generation})", out)
            res = dataclasses.replace(res, meta=dataclasses.replace(
                meta, run_hash=_labels(current).get(names.RUN_HASH_LABEL, "")))
            current = self._update_in_place(body, res, current, out)
            return self._mirror(body, res, old, generation, current, now, out)
        self._stop_runs(body, meta, jobs, None, f"spec changed (generation {generation})", out)
        done = runs.find(old, str(old.get("runHash") or ""))
        if done is not None and done.get("phase") == SUCCEEDED and done.get("specHash") == meta.spec_hash:
            # The finished run of this very spec keeps its result (its MPIJob may be gone).
            return self._finish(body, old, compute.recorded_status(old, generation, done, now, _gate(res)), out)
        if missing:
            return self._finish(body, old, compute.waiting_status(old, generation, r.SPEC_NOT_FOUND, missing, now),
                                out)
        assert wait is not None
        return self._finish(body, old, compute.waiting_status(old, generation, *wait, now), out)

    def _update_in_place(self, body: Mapping[str, Any], res: Resource, job: dict[str, Any],
                         out: Outcome) -> dict[str, Any]:
        """suspend, activeDeadlineSeconds, tolerations: patched into the running MPIJob, no restart."""
        patch = in_place_patch(job, in_place_fields(res))
        if patch is None:
            return job
        name = _name(job)
        if self.api.patch(MPIJOB_API_VERSION, "MPIJob", res.meta.namespace, name, patch):
            out.updated.append(f"MPIJob/{name}")
            changed = ", ".join(sorted({*patch["spec"].get("runPolicy", {}),
                                        *(["tolerations"] if "mpiReplicaSpecs" in patch["spec"] else [])}))
            self._event(body, out, "Normal", r.RUN_UPDATED,
                        f"applied {changed} to run {name} in place (no restart; pods created from now on get "
                        "the new tolerations)")
            fresh = self.api.get(MPIJOB_API_VERSION, "MPIJob", res.meta.namespace, name)
            return fresh or job
        return job

    def _start_run(self, body: Mapping[str, Any], res: Resource, old: Mapping[str, Any], generation: int,
                   jobs: list[dict[str, Any]], text: Optional[str], upstream: Optional[OutputLocation], now: str,
                   out: Outcome) -> Outcome:
        meta = res.meta
        rec = runs.find(old, meta.run_hash) or {}
        # An unfinished run goes on with its attempt (a retry, or its MPIJob deleted by hand); a new one starts at 1.
        attempt = int(rec.get("attempt") or 1) if rec.get("phase") not in (None, SUCCEEDED, FAILED) else 1
        retrying = old.get("reason") == r.RETRYING and old.get("runHash") == meta.run_hash
        job_name = names.mpijob_name(meta, attempt=attempt)
        this_run = old.get("runHash") == meta.run_hash and old.get("mpiJobName")
        if this_run and old.get("phase") == FAILED and old.get("reason") != r.INVALID_SPEC \
                and old.get("observedGeneration") == generation:
            return out  # its MPIJob was removed after it failed: the result stands, nothing re-runs

        again = bool(this_run) and old.get("mpiJobName") == job_name  # its MPIJob was deleted by hand
        # A first generation that never had a run (no MPIJob, no run in status) has no pods to wait for.
        first = generation == 1 and not old.get("mpiJobName") and not old.get("runHash") \
            and old.get("reason") != r.WAITING_FOR_OLD_RUN
        pods = [] if first else self.api.list("v1", "Pod", meta.namespace, _selector(names.owner_labels(meta)))
        # Pods evicted from a lost node stay Terminating until it returns: the next attempt does not wait for them.
        pods = [p for p in pods if not lost_to_node(p)]
        if jobs or pods:
            out.requeue_after = OLD_RUN_POLL_SECONDS
            if retrying:
                return out  # status says which attempt ended and that the next starts once these are gone
            what = (f"MPIJob {job_name} was deleted before the run finished: waiting for its pods to terminate "
                    "before starting it again" if again and not jobs else
                    f"waiting for the previous run to stop before starting generation {generation}")
            message = f"{what}: {len(jobs)} MPIJob(s), {len(pods)} pod(s) left"
            patch = compute.waiting_status(old, generation, r.WAITING_FOR_OLD_RUN, message, now,
                                           job_name if again else None, meta.run_hash if again else None)
            return self._finish(body, old, patch, out)

        history, dropped = runs.trim(runs.records(old), res.run.keep_runs,
                                     (meta.run_hash, runs.promoted_hash(old)))
        remove = self._old_folders(body, res, dropped, out)
        try:
            plan = plan_run(res, text, upstream, remove, attempt)
        except InvalidSpec as err:
            return self._finish(body, old, compute.invalid_status(old, generation, err.message, now), out)

        if generation > 1:  # spec ConfigMaps of earlier runs (their pods are gone)
            for cm in self._owned("v1", "ConfigMap", meta):
                if _generation_of(cm) not in (0, generation) and self.api.delete(
                        "v1", "ConfigMap", meta.namespace, _name(cm), (cm.get("metadata") or {}).get("uid", "")):
                    out.deleted.append(f"ConfigMap/{_name(cm)}")
        if res.run.disruption_budget:  # guards of earlier attempts (one left by an operator killed mid-pass)
            for pdb in self._owned(PDB_API_VERSION, "PodDisruptionBudget", meta):
                if _name(pdb) != plan.mpijob_name:
                    self._drop_budget(meta, _name(pdb), out)
        try:
            for obj in plan.objects:
                self._apply(body, obj, meta, out)
        except NameConflict as err:
            return self._finish(body, old, compute.waiting_status(old, generation, r.NAME_CONFLICT, str(err), now),
                                out)
        m = plan.mapping
        what = (f"{m.ranks} rank(s) x {m.gpus_per_rank} GPU(s), {max(m.workers, 1)} pod(s) with "
                f"{m.gpus_per_pod} GPU(s) each")
        if retrying:
            self._event(body, out, "Normal", r.MPIJOB_CREATED,
                        f"created MPIJob {job_name}: attempt {attempt} of run {meta.run_hash}, resuming from the "
                        f"newest checkpoint in {run_dir(res.run.results_root, meta.run_hash)} ({what})")
        elif again:
            self._event(body, out, "Warning", r.MPIJOB_RECREATED,
                        f"MPIJob {job_name} was deleted before the run finished: started it again ({what}). To "
                        "stop a run, set spec.suspend: true or delete the resource.")
        else:
            folder = run_dir(res.run.results_root, meta.run_hash)
            self._event(body, out, "Normal", r.MPIJOB_CREATED,
                        f"created MPIJob {job_name} for run {meta.run_hash} in {folder}: {what}")
        return self._mirror(body, res, old, generation, plan.objects[-1], now, out, fresh=True, history=history)

    def _old_folders(self, body: Mapping[str, Any], res: Resource, dropped: list[dict[str, Any]],
                     out: Outcome) -> list[str]:
        """Folders of runs beyond spec.keepRuns, as this run's pods see them (its launcher removes them); a run on
        another results volume (spec.volumes.results changed since) is only named in the Event."""
        results = res.run.results
        remove, elsewhere = [], []
        for rec in dropped:
            loc = rec.get("output") or {}
            on_this_volume = results is not None and (not loc or (
                loc.get("claimName") == results.claim_name and (loc.get("subPath") or "") == results.sub_path))
            if on_this_volume and rec.get("runHash"):
                remove.append(run_dir(results.mount_path, str(rec["runHash"])))
            elif loc.get("claimName"):
                elsewhere.append(f"{rec.get('runHash')} ({loc.get('claimName')}/{loc.get('subPath') or ''})")
            else:  # in object storage: the operator and its launcher do not delete objects (docs/storage.md)
                elsewhere.append(f"{rec.get('runHash')} ({rec.get('runPath') or 'object storage'})")
        if remove or elsewhere:
            message = f"spec.keepRuns is {res.run.keep_runs}: "
            if remove:
                message += f"the new run's launcher removes {', '.join(remove)}"
            if elsewhere:
                message += ("; " if remove else "") + (f"run(s) {', '.join(elsewhere)} are on another results "
                                                        "volume or in object storage and stay: remove them by hand "
                                                        "(or with a bucket lifecycle rule)")
            self._event(body, out, "Normal", r.OLD_RUNS_REMOVED, message)
        return remove

    def _mirror(self, body: Mapping[str, Any], res: Resource, old: Mapping[str, Any], generation: int,
                job: Mapping[str, Any], now: str, out: Outcome, fresh: bool = False,
                history: Optional[list[dict[str, Any]]] = None) -> Outcome:
        """Status from the run's MPIJob, with the pods' story when they are stuck or the trainer failed."""
        annotations = (job.get("metadata") or {}).get("annotations") or {}
        name = _name(job)
        cause = None if fresh else self._pod_cause(res, old, generation, job, out)
        attempt = _attempt_of(job)
        ctx = compute.RunContext(res.meta.run_hash, run_dir(res.run.results_root, res.meta.run_hash), gate=_gate(res),
                                 spec_hash=res.meta.spec_hash, history=history, attempt=attempt)
        workload = None if fresh else self._workload(job, now, out)
        ph = phase_of(job, workload)
        if ph.finished and not fresh and (runs.find(old, res.meta.run_hash) or {}).get("phase") not in (
                SUCCEEDED, FAILED):
            self._drop_budget(res.meta, name, out)  # the attempt ended: nothing left to protect from a drain
        if cause is not None and cause.reason == r.NODE_LOST and not ph.finished and not fresh \
                and attempt <= res.run.retry_limit:
            # Still "Running" to the MPI Operator (the ranks left wait for the lost one forever): end it here.
            return self._retry(body, res, old, generation, job, ctx, cause.reason, cause.message, now, out)
        if ph.phase == FAILED and not fresh:
            reason, message = (cause.reason, cause.message) if cause else (ph.reason, ph.message)
            if _retried(reason, message) and attempt <= res.run.retry_limit:
                return self._retry(body, res, old, generation, job, ctx, reason, message, now, out)
            self._remove_leftover_workers(body, res, job, out)
            last = f"; no retry left: attempt {attempt} of {1 + res.run.retry_limit} (spec.retryLimit)"
            if _retried(reason, message) and not message.endswith(last):
                cause = Cause(reason, message + last)
        patch = compute.run_status(old, generation, job, name, decode_output(annotations.get(OUTPUT_ANNOTATION)),
                                   annotations.get(INPUT_MODEL_ANNOTATION), now, cause, ctx, fresh, workload)
        return self._finish(body, old, patch, out)

    def _workload(self, job: Mapping[str, Any], now: str, out: Outcome) -> Optional[dict[str, Any]]:
        """Kueue's Workload of an MPIJob that Kueue holds suspended: its conditions say why it waits (status quotes
        them). None without Kueue, or without permission to read Workloads (the message then names the queue only).
        While Kueue has said nothing, in the first QUEUE_POLL_WINDOW_SECONDS of the MPIJob, the pass comes back."""
        meta = job.get("metadata") or {}
        if not held_by_kueue(job) or not meta.get("uid"):
            return None
        try:
            found = self.api.list(KUEUE_API_VERSION, "Workload", str(meta.get("namespace", "")),
                                  f"{KUEUE_JOB_UID_LABEL}={meta['uid']}")
        except KubeError as err:
            log.debug("cannot read the Workload of MPIJob %s: %s", meta.get("name"), err)
            return None
        workload = found[0] if found else None
        created = meta.get("creationTimestamp")
        if not kueue_says(workload) and created and _seconds_between(str(created), now) < QUEUE_POLL_WINDOW_SECONDS:
            out.requeue_after = min(out.requeue_after or QUEUE_POLL_SECONDS, QUEUE_POLL_SECONDS)
        return workload

    def _retry(self, body: Mapping[str, Any], res: Resource, old: Mapping[str, Any], generation: int,
               job: Mapping[str, Any], ctx: compute.RunContext, reason: str, message: str, now: str,
               out: Outcome) -> Outcome:
        """The attempt failed for a reason running it again can fix: delete it (the garbage collector takes all
        its pods, the workers too), say why, and start the next attempt once they are gone."""
        name, attempt = _name(job), ctx.attempt
        if self.api.delete(MPIJOB_API_VERSION, "MPIJob", res.meta.namespace, name,
                           (job.get("metadata") or {}).get("uid", "")):
            out.deleted.append(f"MPIJob/{name}")
        self._drop_budget(res.meta, name, out)
        if reason == r.NODE_LOST:
            self._stop_stranded_pods(res, job, out)
        total = 1 + res.run.retry_limit
        said = (f"attempt {attempt} of {total} of run {ctx.run_hash} ended ({reason}: {message}); attempt "
                f"{attempt + 1} starts in the same folder, from its newest checkpoint, once the pods of {name} are "
                "gone")
        self._event(body, out, "Warning", r.RETRYING, said)
        out.requeue_after = OLD_RUN_POLL_SECONDS
        nxt = dataclasses.replace(ctx, attempt=attempt + 1)
        failure = {"attempt": attempt, "reason": reason, "message": message}
        return self._finish(body, old, compute.retry_status(old, generation, nxt, failure, said, now), out)

    def _stop_stranded_pods(self, res: Resource, job: Mapping[str, Any], out: Outcome) -> None:
        """After a node loss the ranks left wait in a collective for the lost one: their graceful stop can save
        nothing and would hold the next attempt for the whole grace period. Delete the attempt's pods on the live
        nodes at once (grace 1 s: their kubelet kills them and removes the objects); the lost node's pods are already
        being deleted by the eviction."""
        for pod in _of_attempt(self._generation_pods(res, job), job):
            m = pod.get("metadata") or {}
            if m.get("deletionTimestamp"):
                continue
            if self.api.delete("v1", "Pod", res.meta.namespace, m["name"], m.get("uid", ""), grace_seconds=1):
                out.deleted.append(f"Pod/{m['name']}")

    def _generation_pods(self, res: Resource, job: Mapping[str, Any]) -> list[dict]:
        """The run's pods at the generation `job` (an MPIJob) was made for: every attempt of it."""
        labels = {**names.owner_labels(res.meta), names.GENERATION_LABEL: _labels(job).get(names.GENERATION_LABEL, "")}
        return self.api.list("v1", "Pod", res.meta.namespace, _selector(labels))

    def _drop_budget(self, meta: ResourceMeta, job_name: str, out: Outcome) -> None:
        """The PodDisruptionBudget of an attempt that ended or was stopped (named like its MPIJob)."""
        if self.api.delete(PDB_API_VERSION, "PodDisruptionBudget", meta.namespace, job_name):
            out.deleted.append(f"PodDisruptionBudget/{job_name}")

    def _remove_leftover_workers(self, body: Mapping[str, Any], res: Resource, job: Mapping[str, Any],
                                 out: Outcome) -> None:
        """A failed MPIJob's workers that are still up (MPI Operator v0.8 leaves them when a worker was evicted:
        its clean-up needs a completion time it never sets, upstream issue 647) would hold their GPUs: delete
        them. The launcher pod stays for its logs."""
        for pod in _of_attempt(self._generation_pods(res, job), job, roles=("worker",)):
            m = pod.get("metadata") or {}
            phase = (pod.get("status") or {}).get("phase")
            if m.get("deletionTimestamp") or phase in ("Succeeded", "Failed"):
                continue
            if self.api.delete("v1", "Pod", res.meta.namespace, m["name"], m.get("uid", "")):
                out.deleted.append(f"Pod/{m['name']}")
                self._event(body, out, "Normal", r.WORKERS_REMOVED,
                            f"deleted worker pod {m['name']} ({phase}) of the failed MPIJob {_name(job)}: it would "
                            "hold its node's resources (the MPI Operator leaves it)")

    def _pod_cause(self, res: Resource, old: Mapping[str, Any], generation: int, job: Mapping[str, Any],
                   out: Outcome) -> Optional[Cause]:
        ph = phase_of(job)
        if ph.phase == SUCCEEDED or not (job.get("status") or {}).get("conditions"):
            return None  # done, or the MPI Operator has not made any pod yet
        name = _name(job)
        if ph.phase == FAILED and old.get("mpiJobName") == name and old.get("phase") == FAILED:
            # Already explained for this run: the launcher pod may be gone by now.
            explained = old.get("reason") in (r.TRAINER_FAILED, r.WORKER_EVICTED, r.RANK_LOST, r.RUN_STOPPED,
                                              r.NODE_LOST)
            return Cause(str(old["reason"]), str(old.get("message") or "")) if explained else None
        pods = self._generation_pods(res, job)
        mine = _of_attempt(pods, job)
        if ph.phase == FAILED:
            return failure_cause(mine)
        lost = node_lost(mine)
        if lost is not None:
            return lost
        events: list[dict[str, Any]] = []
        for pod in stuck_creating(pods)[:3]:
            events += self.api.list("v1", "Event", res.meta.namespace,
                                    field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod}")
        cause = pod_cause(pods, events, res.run.key_secret.name, res.run.image)
        if cause is None and stuck_creating(pods):
            out.requeue_after = STUCK_POLL_SECONDS
        return cause

    def dependents(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Resources in the namespace that read `body`'s model (re-reconciled when its promoted run changes: they
        start a run on the new model, or take back their run on a model promoted again)."""
        meta = body.get("metadata") or {}
        key = {"ClassificationTrain": "fromTrain", "ClassificationPrune": "fromPrune"}.get(body.get("kind", ""))
        if key is None:
            return []
        found = []
        for kind, field_name in (("ClassificationTrain", "pretrainedModel"), ("ClassificationPrune", "model"),
                                 ("ClassificationExport", "model")):
            for obj in self.api.list(body["apiVersion"], kind, meta["namespace"]):
                ref = (obj.get("spec") or {}).get(field_name) or {}
                if ref.get(key) == meta.get("name"):
                    found.append(obj)
        return found
