"""The promotion gate (spec.promotion): does a finished run's model replace the promoted one?

Pure: the run's evaluation (what the trainer's `train --evaluate` wrote into status.progress) and the promoted
run's record in, a verdict with both numbers out. Without a gate every successful run is promoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from kestrel_operator.resources.status_fields import EVALUATION_FIELDS
from kestrel_operator.resources.types import Promotion
from kestrel_operator.status import reasons as r
from kestrel_trainer.spec.contract import PROGRESS_RUN, PROGRESS_TOP1, PROGRESS_TOP_K_VALUE, PROGRESS_TOPK

__all__ = ["EVALUATION_FIELDS", "METRIC_FIELDS", "Verdict", "decide", "evaluation_of", "gate_record"]

# spec.promotion.metric -> the field of status.progress (and of a record's evaluation) that measures it.
METRIC_FIELDS: Mapping[str, str] = {"top1": PROGRESS_TOP1, "topK": PROGRESS_TOPK}


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str  # reasons.PROMOTED, PROMOTION_REJECTED or EVALUATION_MISSING
    message: str


def evaluation_of(progress: Optional[Mapping[str, Any]], run_name: str) -> Optional[dict[str, Any]]:
    """The end-of-run evaluation the run `run_name` reported, or None."""
    if not progress or (progress.get(PROGRESS_RUN) and progress.get(PROGRESS_RUN) != run_name):
        return None
    found = {k: progress[k] for k in EVALUATION_FIELDS if progress.get(k) is not None}
    return found or None


def gate_record(gate: Optional[Promotion]) -> Optional[dict[str, Any]]:
    """The gate as a run record keeps it (None: no gate)."""
    if gate is None:
        return None
    out = {"metric": gate.metric, "minimum": gate.minimum, "maxDrop": gate.max_drop}
    return {k: v for k, v in out.items() if v is not None}


def _name(metric: str, evaluation: Optional[Mapping[str, Any]]) -> str:
    k = (evaluation or {}).get(PROGRESS_TOP_K_VALUE)
    return f"top-{k} accuracy" if metric == "topK" and k else "top-1 accuracy" if metric == "top1" else "top-k accuracy"


def decide(gate: Optional[Promotion], run_hash: str, evaluation: Optional[Mapping[str, Any]],
           promoted: Optional[Mapping[str, Any]]) -> Verdict:
    """The verdict on run `run_hash`; `promoted` is status.promoted before it (None: no model promoted yet)."""
    if gate is None:
        return Verdict(True, r.PROMOTED, f"run {run_hash} succeeded and is the promoted model (no spec.promotion gate)")
    field = METRIC_FIELDS[gate.metric]
    name = _name(gate.metric, evaluation)
    value = (evaluation or {}).get(field)
    current = (promoted or {}).get("runHash")
    keeps = f"the promoted model stays run {current}" if current else "no model is promoted yet"
    if value is None:
        return Verdict(False, r.EVALUATION_MISSING,
                       f"run {run_hash} succeeded but reported no {name} (its end-of-run evaluation did not reach "
                       f"the status: see the launcher's log); {keeps}")
    value = float(value)
    if gate.minimum is not None and value < gate.minimum:
        return Verdict(False, r.PROMOTION_REJECTED, f"run {run_hash}: {name} {value:.4f} is below "
                                                    f"spec.promotion.minimum {gate.minimum:.4f}; {keeps}")
    before = ((promoted or {}).get("evaluation") or {}).get(field)
    if gate.max_drop is not None and before is not None and value < float(before) - gate.max_drop:
        return Verdict(False, r.PROMOTION_REJECTED,
                       f"run {run_hash}: {name} {value:.4f} is below the promoted run {current}'s {float(before):.4f} "
                       f"minus spec.promotion.maxDrop {gate.max_drop:.4f}; {keeps}")
    against = []
    if gate.minimum is not None:
        against.append(f">= minimum {gate.minimum:.4f}")
    if gate.max_drop is not None:
        against.append(f">= run {current}'s {float(before):.4f} - maxDrop {gate.max_drop:.4f}" if before is not None
                       else "no promoted run to compare with")
    detail = f" ({', '.join(against)})" if against else ""
    return Verdict(True, r.PROMOTED, f"run {run_hash} is the promoted model: {name} {value:.4f}{detail}")
