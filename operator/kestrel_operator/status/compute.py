"""The status patch for each situation, and the Event a transition deserves.

Every patch names all of our top-level status keys (None deletes under a JSON merge patch), so a
new run never shows the previous run's times or output; `progress` is only touched to drop a stale one.
Every patch ends with a `Ready` condition (True once the run succeeded and its output exists: what
`kubectl wait --for=condition=Ready` and dependents wait for), and every condition carries the
`observedGeneration` it was computed for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from kestrel_operator.status import conditions as cond
from kestrel_operator.status import reasons as r
from kestrel_operator.status.phase import FAILED, PENDING, RUNNING, SUCCEEDED, Phase, phase_of
from kestrel_operator.status.pods import Cause
from kestrel_operator.status.progress import progress_for_run
from kestrel_trainer.spec.contract import PROGRESS

READY = "Ready"
# Kept for callers that import it from here; the one list is reasons.WARNING_REASONS.
WARNING_REASONS = r.WARNING_REASONS


def _base(generation: int, phase: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "phase": phase,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "mpiJobName": None,
        "startTime": None,
        "completionTime": None,
        "outputPath": None,
        "output": None,
        "inputModelPath": None,
    }


def _same_generation(old: Mapping[str, Any], generation: int) -> bool:
    return old.get("observedGeneration") == generation


def _drop_stale_progress(old: Mapping[str, Any], run: Optional[str], patch: dict[str, Any]) -> None:
    progress = old.get(PROGRESS)
    if progress and progress_for_run(progress, run) is None:
        patch[PROGRESS] = None


def _finish(old: Mapping[str, Any], generation: int, patch: dict[str, Any], now: str) -> dict[str, Any]:
    """Add Ready (from phase, reason, message) and stamp observedGeneration on every condition."""
    previous = old.get("conditions")
    ready = "True" if patch["phase"] == SUCCEEDED else "False"
    conditions = [c for c in patch.get("conditions") or [] if c.get("type") != READY]
    conditions.append(cond.condition(READY, ready, str(patch["reason"]), str(patch["message"] or ""),
                                     cond.find(previous, READY), now))
    patch["conditions"] = [{**c, "observedGeneration": generation} for c in conditions]
    return patch


def invalid_status(old: Mapping[str, Any], generation: int, message: str, now: str) -> dict[str, Any]:
    """Failed/InvalidSpec with the loader's message; nothing of a run remains in status."""
    message = f"{message} (fix the resource; the next edit is checked again)"
    patch = _base(generation, FAILED, r.INVALID_SPEC, message)
    previous = old.get("conditions") if _same_generation(old, generation) else None
    patch["conditions"] = [cond.condition("Failed", "True", r.INVALID_SPEC, message,
                                          cond.find(previous, "Failed"), now)]
    if old.get(PROGRESS):
        patch[PROGRESS] = None
    return _finish(old, generation, patch, now)


def waiting_status(old: Mapping[str, Any], generation: int, reason: str, message: str,
                   now: str = "", mpijob_name: Optional[str] = None) -> dict[str, Any]:
    """Pending before a run exists: waiting for a referenced model, the spec ConfigMap, an old run's pods
    (`mpijob_name`: the run of this generation that is being started again)."""
    patch = _base(generation, PENDING, reason, message)
    patch["mpiJobName"] = mpijob_name
    patch["conditions"] = []
    if old.get(PROGRESS):
        patch[PROGRESS] = None
    return _finish(old, generation, patch, now)


def error_status(old: Mapping[str, Any], generation: int, reason: str, message: str, now: str) -> dict[str, Any]:
    """An API call failed (retried with backoff): keep what status said about the run, change reason/message."""
    patch = {k: old.get(k) for k in _base(generation, PENDING, "", "")}
    patch.update(phase=old.get("phase") or PENDING, reason=reason, message=message,
                 observedGeneration=old.get("observedGeneration") or generation)
    patch["conditions"] = [c for c in old.get("conditions") or [] if c.get("type") != READY]
    return _finish(old, generation, patch, now)


def run_status(old: Mapping[str, Any], generation: int, mpijob: Optional[Mapping[str, Any]], mpijob_name: str,
               output: Optional[Mapping[str, Any]], model_path: Optional[str], now: str,
               cause: Optional[Cause] = None) -> dict[str, Any]:
    """Mirror the run's MPIJob: phase, conditions, times; the output once it succeeded. `cause` (from the
    pods) replaces the MPIJob's reason while the run is Pending or Running, or explains a failure."""
    ph: Phase = phase_of(mpijob)
    reason, message = ph.reason, ph.message
    if cause is not None and ph.phase in (PENDING, RUNNING, FAILED):
        reason, message = cause.reason, cause.message
    patch = _base(generation, ph.phase, reason, message)
    patch["mpiJobName"] = mpijob_name
    patch["inputModelPath"] = model_path
    job_status = (mpijob or {}).get("status") or {}
    patch["startTime"] = job_status.get("startTime")
    patch["completionTime"] = job_status.get("completionTime")
    previous = old.get("conditions") if _same_generation(old, generation) else None
    patch["conditions"] = cond.mirror(previous, job_status.get("conditions"), now)
    if ph.phase == SUCCEEDED and output:
        patch["outputPath"] = output.get("path")
        patch["output"] = {k: output[k] for k in ("claimName", "subPath", "relativePath") if k in output}
    _drop_stale_progress(old, mpijob_name, patch)
    return _finish(old, generation, patch, now)


def differs(old: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Would applying `patch` (a merge patch of status) change `old`? Unchanged: write nothing."""
    for key, value in patch.items():
        current = old.get(key)
        if value is None:
            if current is not None:
                return True
        elif isinstance(value, Mapping) and isinstance(current, Mapping):
            if differs(current, value):
                return True
        elif current != value:
            return True
    return False


def transition_event(old: Mapping[str, Any], patch: Mapping[str, Any]) -> Optional[tuple[str, str, str]]:
    """(type, reason, message) when phase, reason or generation changed; None otherwise."""
    keys = ("phase", "reason", "observedGeneration")
    if all(old.get(k) == patch.get(k) for k in keys):
        return None
    reason = str(patch.get("reason") or patch.get("phase"))
    etype = "Warning" if reason in r.WARNING_REASONS or patch.get("phase") == FAILED else "Normal"
    message = f"{patch.get('phase')}: {patch.get('message') or reason}"
    return etype, reason, message[:1024]
