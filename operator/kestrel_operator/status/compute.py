"""The status patch for each situation, and the Event a transition deserves.

Every patch names all of our top-level status keys (None deletes under a JSON merge patch), so a
new run never shows the previous run's times or output; `progress` is only touched to drop a stale one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from kestrel_operator.status import conditions as cond
from kestrel_operator.status.phase import FAILED, PENDING, SUCCEEDED, Phase, phase_of
from kestrel_operator.status.progress import progress_for_run

# Reasons that are Warning events; everything else is Normal.
WARNING_REASONS = {"InvalidSpec", "SpecNotFound", "ModelSourceFailed", "NameConflict", "MPIJobFailed"}


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
    progress = old.get("progress")
    if progress and progress_for_run(progress, run) is None:
        patch["progress"] = None


def invalid_status(old: Mapping[str, Any], generation: int, message: str, now: str) -> dict[str, Any]:
    """Failed/InvalidSpec with the loader's message; nothing of a run remains in status."""
    patch = _base(generation, FAILED, "InvalidSpec", message)
    previous = old.get("conditions") if _same_generation(old, generation) else None
    patch["conditions"] = [cond.condition("Failed", "True", "InvalidSpec", message, cond.find(previous, "Failed"),
                                          now)]
    if old.get("progress"):
        patch["progress"] = None
    return patch


def waiting_status(old: Mapping[str, Any], generation: int, reason: str, message: str) -> dict[str, Any]:
    """Pending before a run exists: waiting for a referenced model or for the spec ConfigMap."""
    patch = _base(generation, PENDING, reason, message)
    patch["conditions"] = []
    if old.get("progress"):
        patch["progress"] = None
    return patch


def run_status(old: Mapping[str, Any], generation: int, mpijob: Optional[Mapping[str, Any]], mpijob_name: str,
               output: Optional[Mapping[str, Any]], model_path: Optional[str], now: str,
               trainer_error: Optional[str] = None) -> dict[str, Any]:
    """Mirror the run's MPIJob: phase, conditions, times; the output once it succeeded. A failed run's
    message is the trainer's own error line when the launcher left one (status/trainer_error.py)."""
    ph: Phase = phase_of(mpijob)
    message = trainer_error if ph.phase == FAILED and trainer_error else ph.message
    patch = _base(generation, ph.phase, ph.reason, message)
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
    return patch


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
    etype = "Warning" if reason in WARNING_REASONS or patch.get("phase") == FAILED else "Normal"
    message = f"{patch.get('phase')}: {patch.get('message') or reason}"
    return etype, reason, message[:1024]
