"""Conditions: set one without churn, mirror the MPIJob's.

Like the MPI Operator's setCondition: an unchanged condition keeps its lastTransitionTime, so a
resync that changes nothing writes nothing and `kubectl describe` shows when things really moved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

# The MPIJob condition types we mirror, in the order they usually appear.
MIRRORED = ("Created", "Running", "Restarting", "Succeeded", "Failed")


def find(conditions: Sequence[Mapping[str, Any]] | None, ctype: str) -> Optional[Mapping[str, Any]]:
    return next((c for c in conditions or () if c.get("type") == ctype), None)


def condition(ctype: str, status: str, reason: str, message: str, previous: Optional[Mapping[str, Any]],
              now: str, transition_time: Optional[str] = None) -> dict[str, Any]:
    """A condition; lastTransitionTime is kept from `previous` when the status did not change."""
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        ltt = previous["lastTransitionTime"]
    else:
        ltt = transition_time or now
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": ltt}


def set_condition(conditions: Sequence[Mapping[str, Any]] | None, ctype: str, status: str, reason: str,
                  message: str, now: str) -> list[dict[str, Any]]:
    """A new list with `ctype` set (added at the end if absent, in place otherwise)."""
    out = [dict(c) for c in conditions or ()]
    new = condition(ctype, status, reason, message, find(out, ctype), now)
    for i, c in enumerate(out):
        if c.get("type") == ctype:
            out[i] = new
            return out
    out.append(new)
    return out


def mirror(previous: Sequence[Mapping[str, Any]] | None, mpijob_conditions: Sequence[Mapping[str, Any]] | None,
           now: str) -> list[dict[str, Any]]:
    """Our conditions = the MPIJob's mirrored types, with its reasons, messages and transition times."""
    out = []
    for c in mpijob_conditions or ():
        ctype = c.get("type")
        if ctype not in MIRRORED:
            continue
        out.append(condition(
            ctype, str(c.get("status", "Unknown")), str(c.get("reason") or ctype), str(c.get("message") or ""),
            find(previous, ctype), now, transition_time=c.get("lastTransitionTime"),
        ))
    return sorted(out, key=lambda c: MIRRORED.index(c["type"]))
