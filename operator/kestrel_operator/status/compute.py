"""The status patch for each situation, and the Event a transition deserves.

Every patch names all of our top-level status keys about the current run (None deletes under a JSON merge
patch), so a new run never shows the previous run's times or output; `progress` is only touched to drop a
stale one; the run history (`runs`) and the promoted run (`promoted`) are written only when they change.
Every patch ends with the conditions GitOps tools read (kstatus, Argo CD): `Reconciling` (a run of this
generation is pending, running or held), `Stalled` (failed, or cannot go on without a change; the message
says why) and `Ready` (the run succeeded and its model is the promoted one: what `kubectl wait
--for=condition=Ready` waits for), each with the `observedGeneration` it was computed for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from kestrel_operator.resources.types import Promotion
from kestrel_operator.status import conditions as cond
from kestrel_operator.status import reasons as r
from kestrel_operator.status import runs
from kestrel_operator.status.phase import FAILED, PENDING, RUNNING, SUCCEEDED, SUSPENDED, Phase, phase_of
from kestrel_operator.status.pods import Cause
from kestrel_operator.status.progress import progress_for_run
from kestrel_operator.status.promotion import decide, evaluation_of, gate_record
from kestrel_trainer.spec.contract import PROGRESS

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
PROMOTED = "Promoted"  # ClassificationTrain with spec.promotion: the gate's verdict on the current run
# Our own condition types, after the mirrored MPIJob ones.
OWN = (PROMOTED, RECONCILING, STALLED, READY)
# Earlier attempts' failures kept in a run record (the Events keep every one).
MAX_ATTEMPT_FAILURES = 10


@dataclass(frozen=True)
class RunContext:
    """Which run the status is about: its hash and folder, and the gate it must pass (None: none)."""

    run_hash: str
    run_path: str
    gate: Optional[Promotion] = None
    spec_hash: str = ""
    # The history to record the run in (default: status.runs); a new run passes it already trimmed.
    history: Optional[list[dict[str, Any]]] = None
    attempt: int = 1  # of the run (spec.retryLimit)
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
        "runHash": None,
        "runPath": None,
        "attempt": None,
    }


def _same_generation(old: Mapping[str, Any], generation: int) -> bool:
    return old.get("observedGeneration") == generation


def _drop_stale_progress(old: Mapping[str, Any], run: Optional[str], patch: dict[str, Any]) -> None:
    progress = old.get(PROGRESS)
    if progress and progress_for_run(progress, run) is None:
        patch[PROGRESS] = None


def _finish(old: Mapping[str, Any], generation: int, patch: dict[str, Any], now: str) -> dict[str, Any]:
    """Add Reconciling, Stalled and Ready (from phase, reason, message and the promoted run) and stamp
    observedGeneration on every condition."""
    previous = old.get("conditions")
    phase, reason, message = patch["phase"], str(patch["reason"]), str(patch["message"] or "")
    promoted = patch[runs.PROMOTED] if runs.PROMOTED in patch else old.get(runs.PROMOTED)
    is_promoted = bool(patch.get("runHash")) and runs.promoted_hash({runs.PROMOTED: promoted}) == patch["runHash"]
    stalled = phase == FAILED or reason in r.STALLED_REASONS or (phase == SUCCEEDED and not is_promoted)
    reconciling = not stalled and phase in (PENDING, RUNNING, SUSPENDED)
    ready = phase == SUCCEEDED and is_promoted
    conditions = [c for c in patch.get("conditions") or [] if c.get("type") not in (RECONCILING, STALLED, READY)]
    for ctype, value in ((RECONCILING, reconciling), (STALLED, stalled), (READY, ready)):
        conditions.append(cond.condition(ctype, "True" if value else "False", reason, message,
                                         cond.find(previous, ctype), now))
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
                   now: str = "", mpijob_name: Optional[str] = None, run_hash: Optional[str] = None) -> dict[str, Any]:
    """Pending before a run exists: waiting for a referenced model, the spec ConfigMap, an old run's pods
    (`mpijob_name`, `run_hash`: the run that is being started again)."""
    patch = _base(generation, PENDING, reason, message)
    patch["mpiJobName"] = mpijob_name
    patch["runHash"] = run_hash
    patch["conditions"] = []
    if old.get(PROGRESS):
        patch[PROGRESS] = None
    return _finish(old, generation, patch, now)


def error_status(old: Mapping[str, Any], generation: int, reason: str, message: str, now: str) -> dict[str, Any]:
    """An API call failed (retried with backoff): keep what status said about the run, change reason/message."""
    patch = {k: old.get(k) for k in _base(generation, PENDING, "", "")}
    patch.update(phase=old.get("phase") or PENDING, reason=reason, message=message,
                 observedGeneration=old.get("observedGeneration") or generation)
    patch["conditions"] = [c for c in old.get("conditions") or [] if c.get("type") not in (RECONCILING, STALLED, READY)]
    return _finish(old, generation, patch, now)


def _record(old: Mapping[str, Any], generation: int, ctx: RunContext, phase: str, mpijob_name: Optional[str],
            completion: Optional[str], output: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The run's history record, updated with what the MPIJob says now."""
    rec = runs.find(old, ctx.run_hash) or {}
    rec.update(runHash=ctx.run_hash, specHash=ctx.spec_hash or rec.get("specHash"), generation=generation,
               phase=phase, mpiJobName=mpijob_name, runPath=ctx.run_path, attempt=ctx.attempt)
    if completion:
        rec["completionTime"] = completion
    if phase == SUCCEEDED and output:
        rec["outputPath"] = output.get("path")
        rec["output"] = {k: output[k] for k in ("claimName", "subPath", "relativePath") if output.get(k)
                         or (k == "subPath" and output.get("claimName"))}
    return {k: v for k, v in rec.items() if v is not None}


def _judge(old: Mapping[str, Any], ctx: RunContext, rec: dict[str, Any], mpijob_name: str,
           patch: dict[str, Any]) -> None:
    """A run that just succeeded: the gate's verdict into its record, and it becomes the promoted run if it passed.
    Judged once: later passes read the verdict from the record."""
    if rec.get("promotion"):
        return
    evaluation = evaluation_of(old.get(PROGRESS), mpijob_name)
    if evaluation:
        rec["evaluation"] = evaluation
    _verdict(old, ctx.gate, rec, patch)


def _verdict(old: Mapping[str, Any], gate: Optional[Promotion], rec: dict[str, Any], patch: dict[str, Any]) -> None:
    """Judge `rec` (its evaluation) with `gate` against the promoted run; record the verdict and the gate."""
    verdict = decide(gate, rec["runHash"], rec.get("evaluation"), old.get(runs.PROMOTED))
    rec["promotion"], rec["promotionMessage"] = verdict.reason, verdict.message
    rec["gate"] = gate_record(gate)
    if verdict.promoted:
        patch[runs.PROMOTED] = runs.promoted_record(rec)


def _promoted_condition(rec: Mapping[str, Any], previous: Any, now: str) -> dict[str, Any]:
    passed = rec.get("promotion") == r.PROMOTED
    return cond.condition(PROMOTED, "True" if passed else "False", str(rec.get("promotion")),
                          str(rec.get("promotionMessage") or ""), cond.find(previous, PROMOTED), now)


def _history(old: Mapping[str, Any], ctx: RunContext, rec: Mapping[str, Any], patch: dict[str, Any]) -> None:
    history = runs.upsert(ctx.history if ctx.history is not None else runs.records(old), rec)
    if history != old.get(runs.RUNS):
        patch[runs.RUNS] = history


def run_status(old: Mapping[str, Any], generation: int, mpijob: Optional[Mapping[str, Any]], mpijob_name: str,
               output: Optional[Mapping[str, Any]], model_path: Optional[str], now: str,
               cause: Optional[Cause] = None, ctx: Optional[RunContext] = None, fresh: bool = False,
               workload: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Mirror the run's MPIJob: phase, conditions, times; the output once it succeeded, and then the gate's
    verdict (ctx.gate; without one the run is promoted). `cause` (from the pods) replaces the MPIJob's reason
    while the run is Pending or Running, or explains a failure. `fresh`: the run was just created (the
    previous run's progress goes). `workload`: Kueue's Workload while Kueue holds the MPIJob (why it waits)."""
    ctx = ctx or RunContext("", "")
    ph: Phase = phase_of(mpijob, workload)
    reason, message = ph.reason, ph.message
    if cause is not None and ph.phase in (PENDING, RUNNING, FAILED):
        reason, message = cause.reason, cause.message
    job_status = (mpijob or {}).get("status") or {}
    rec = _record(old, generation, ctx, ph.phase, mpijob_name, job_status.get("completionTime"), output)
    patch = _base(generation, ph.phase, reason, message)
    previous = old.get("conditions") if _same_generation(old, generation) else None
    patch["conditions"] = cond.mirror(previous, job_status.get("conditions"), now)
    if ph.phase == SUCCEEDED and output:
        _judge(old, ctx, rec, mpijob_name, patch)
        if ctx.gate is not None:
            patch["reason"], patch["message"] = rec["promotion"], rec["promotionMessage"]
        patch["conditions"].append(_promoted_condition(rec, previous, now))
    patch.update(mpiJobName=mpijob_name, inputModelPath=model_path, startTime=job_status.get("startTime"),
                 completionTime=job_status.get("completionTime"), runHash=ctx.run_hash or None,
                 runPath=ctx.run_path or None, outputPath=rec.get("outputPath"), output=rec.get("output"),
                 attempt=ctx.attempt if ctx.run_hash else None)
    if ctx.run_hash:
        _history(old, ctx, rec, patch)
    if fresh and old.get(PROGRESS):
        patch[PROGRESS] = None
    else:
        _drop_stale_progress(old, mpijob_name, patch)
    return _finish(old, generation, patch, now)


def retry_status(old: Mapping[str, Any], generation: int, ctx: RunContext, failure: Mapping[str, Any], message: str,
                 now: str) -> dict[str, Any]:
    """An attempt ended for a reason other than the trainer's own error (`failure`: attempt, reason, message):
    Pending/Retrying until its pods are gone and attempt ctx.attempt starts in the same folder."""
    patch = _base(generation, PENDING, r.RETRYING, message)
    patch.update(runHash=ctx.run_hash, runPath=ctx.run_path, attempt=ctx.attempt)
    rec = runs.find(old, ctx.run_hash) or {"runHash": ctx.run_hash, "runPath": ctx.run_path}
    failures = [*(rec.get("attemptFailures") or []), {**failure, "time": now}][-MAX_ATTEMPT_FAILURES:]
    rec.update(phase=PENDING, attempt=ctx.attempt, attemptFailures=failures, mpiJobName=None, generation=generation)
    _history(old, ctx, {k: v for k, v in rec.items() if v is not None}, patch)
    patch["conditions"] = []
    return _finish(old, generation, patch, now)


def recorded_status(old: Mapping[str, Any], generation: int, rec: Mapping[str, Any], now: str,
                    gate: Optional[Promotion] = None) -> dict[str, Any]:
    """A run already recorded as Succeeded, with no pod: its MPIJob was removed after it finished (TTL), or the
    spec maps to it again (a revert): its result and its verdict are back, and it is promoted again if it passed
    the gate. Nothing re-runs. A run the gate refused is judged again when the gate changed since (`gate`: the
    resource's spec.promotion now), so lowering a threshold can accept it."""
    rec = dict(rec)
    patch: dict[str, Any] = {}
    rejudged = (rec.get("promotion") not in (None, r.PROMOTED) and gate is not None
                and rec.get("gate") != gate_record(gate))
    if rejudged:
        _verdict(old, gate, rec, patch)
    again = old.get("runHash") == rec["runHash"] and old.get("phase") == SUCCEEDED
    when = f" at {rec['completionTime']}" if rec.get("completionTime") else ""
    if rejudged:
        reason, message = str(rec["promotion"]), f"{rec['promotionMessage']} (judged again: spec.promotion changed)"
        rec["promotionMessage"] = message
    elif again:
        reason, message = str(old.get("reason")), str(old.get("message") or "")
    else:
        reason = r.RUN_REUSED
        message = (f"the spec is the one of run {rec['runHash']} again, which succeeded{when} (generation "
                   f"{rec.get('generation')}): its result is back with no new run")
        if rec.get("promotionMessage"):
            message += f"; {rec['promotionMessage']}"
    patch.update(_base(generation, SUCCEEDED, reason, message))
    patch.update(runHash=rec["runHash"], runPath=rec.get("runPath"), outputPath=rec.get("outputPath"),
                 output=rec.get("output"), completionTime=rec.get("completionTime"), attempt=rec.get("attempt"),
                 mpiJobName=old.get("mpiJobName") if again else None,
                 startTime=old.get("startTime") if again else None,
                 inputModelPath=old.get("inputModelPath") if again else None)
    previous = old.get("conditions")
    patch["conditions"] = [c for c in previous or () if c.get("type") not in OWN] if again else []
    if rec.get("promotion"):
        patch["conditions"].append(_promoted_condition(rec, previous, now))
        if rec["promotion"] == r.PROMOTED and runs.promoted_hash(old) != rec["runHash"]:
            patch[runs.PROMOTED] = runs.promoted_record(rec)
    updated = {**rec, "generation": generation} if not again else rec
    history = runs.upsert(runs.records(old), updated)
    if history != old.get(runs.RUNS):
        patch[runs.RUNS] = history
    if not again and old.get(PROGRESS):
        patch[PROGRESS] = None
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
