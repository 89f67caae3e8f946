"""The resource's phase from its MPIJob: Pending, Running, Succeeded or Failed.

Terminal conditions win over Running (an MPIJob can keep a stale Running=True next to
Succeeded=True for a moment), and Restarting counts as Running: the run is still alive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from kestrel_operator.status.conditions import find

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
PHASES = (PENDING, RUNNING, SUCCEEDED, FAILED)


@dataclass(frozen=True)
class Phase:
    phase: str
    reason: str
    message: str

    @property
    def finished(self) -> bool:
        return self.phase in (SUCCEEDED, FAILED)


def phase_of(mpijob: Optional[Mapping[str, Any]]) -> Phase:
    if mpijob is None:
        return Phase(PENDING, "MPIJobMissing", "the MPIJob of this run does not exist yet")
    conditions = (mpijob.get("status") or {}).get("conditions") or []
    for ctype, phase in (("Failed", FAILED), ("Succeeded", SUCCEEDED), ("Restarting", RUNNING),
                         ("Running", RUNNING), ("Suspended", PENDING), ("Created", PENDING)):
        c = find(conditions, ctype)
        if c is not None and c.get("status") == "True":
            return Phase(phase, str(c.get("reason") or ctype), str(c.get("message") or ""))
    name = (mpijob.get("metadata") or {}).get("name", "")
    return Phase(PENDING, "MPIJobPending", f"MPIJob {name} created, waiting for the MPI Operator")
