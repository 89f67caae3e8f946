"""The resource's run history (status.runs) and its promoted run (status.promoted).

A run record says what one run (one run hash, one folder) became: its phase, where its model is, what the
trainer's end-of-run evaluation measured and whether it passed the promotion gate. Records are kept newest
first; when a new run starts, runs beyond spec.keepRuns are dropped (their folders are removed by the new run's
launcher), never the promoted one. A spec that maps to a recorded Succeeded run takes that run's result back
with no new pod (a `git revert` is a rollback), and a run whose MPIJob the TTL removed keeps its result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from kestrel_operator.resources.status_fields import PROMOTED, RECORD_FIELDS, RUNS

__all__ = ["PROMOTED", "RECORD_FIELDS", "RUNS", "records", "find", "promoted_hash", "upsert", "trim",
           "promoted_record"]


def records(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in status.get(RUNS) or () if isinstance(r, Mapping) and r.get("runHash")]


def find(status: Mapping[str, Any], run_hash: str) -> Optional[dict[str, Any]]:
    return next((r for r in records(status) if r["runHash"] == run_hash), None)


def promoted_hash(status: Mapping[str, Any]) -> str:
    return str((status.get(PROMOTED) or {}).get("runHash") or "")


def upsert(history: Sequence[Mapping[str, Any]], record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`record` first, replacing the record of the same run."""
    return [dict(record), *(dict(r) for r in history if r.get("runHash") != record.get("runHash"))]


def trim(history: Sequence[Mapping[str, Any]], keep: int, protected: Sequence[str]) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]]]:
    """(kept, dropped): the `protected` runs (the current and the promoted one) and the `keep` newest others."""
    kept, dropped, others = [], [], 0
    for r in history:
        if r.get("runHash") in protected:
            kept.append(dict(r))
        elif others < keep:
            kept.append(dict(r))
            others += 1
        else:
            dropped.append(dict(r))
    return kept, dropped


def promoted_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """status.promoted: what dependents (fromTrain/fromPrune) read, and the gate compares with."""
    keys = ("runHash", "generation", "completionTime", "runPath", "outputPath", "output", "evaluation")
    return {k: record[k] for k in keys if record.get(k) is not None}
