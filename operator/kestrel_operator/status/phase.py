"""The resource's phase from its MPIJob: Pending, Suspended, Running, Succeeded or Failed.

Terminal conditions win over Running (an MPIJob can keep a stale Running=True next to
Succeeded=True for a moment), and Restarting counts as Running: the run is still alive. A suspended
MPIJob (our spec.suspend, or Kueue holding it until its queue admits it) is Suspended, not Pending; for a queued
one, Kueue's Workload (named after the MPIJob, labelled with its uid) says why it waits and the message quotes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from kestrel_operator.resources.defaults import KUEUE_QUEUE_LABEL
from kestrel_operator.resources.types import FAILED, PENDING, PHASES, RUNNING, SUCCEEDED, SUSPENDED
from kestrel_operator.status import reasons as r
from kestrel_operator.status.conditions import find

__all__ = ["PENDING", "SUSPENDED", "RUNNING", "SUCCEEDED", "FAILED", "PHASES", "Phase", "held_by_kueue", "kueue_says",
           "phase_of"]


@dataclass(frozen=True)
class Phase:
    phase: str
    reason: str
    message: str

    @property
    def finished(self) -> bool:
        return self.phase in (SUCCEEDED, FAILED)


def held_by_kueue(mpijob: Optional[Mapping[str, Any]]) -> bool:
    """A queued MPIJob (Kueue's queue label) that is suspended: Kueue has not admitted it, or took it back."""
    if not mpijob or not ((mpijob.get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL):
        return False
    return bool(((mpijob.get("spec") or {}).get("runPolicy") or {}).get("suspend"))


def kueue_says(workload: Optional[Mapping[str, Any]]) -> str:
    """Why Kueue holds a Workload, in its own words: an eviction (preemption, deactivation: condition Evicted=True)
    and why it has no quota now (QuotaReserved=False, e.g. "couldn't assign flavors to pod set launcher:
    insufficient unused quota for cpu in flavor default, 50m more needed"), joined; "" when it has said nothing."""
    conditions = ((workload or {}).get("status") or {}).get("conditions") or []
    said = []
    for ctype, status in (("Evicted", "True"), ("QuotaReserved", "False")):
        c = find(conditions, ctype)
        if c is not None and c.get("status") == status and c.get("message"):
            said.append(str(c["message"]).strip().rstrip("."))
    return "; ".join(said)


def _suspended(mpijob: Mapping[str, Any], reason: str, message: str,
               workload: Optional[Mapping[str, Any]] = None) -> Phase:
    queue = ((mpijob.get("metadata") or {}).get("labels") or {}).get(KUEUE_QUEUE_LABEL)
    if queue:
        said = kueue_says(workload)
        if said:
            name = (workload or {}).get("metadata", {}).get("name", "")
            return Phase(SUSPENDED, r.QUEUED, f"queued in Kueue LocalQueue {queue}: {said} (Workload {name}); the "
                                              "run starts when Kueue admits it")
        return Phase(SUSPENDED, r.QUEUED, f"queued in Kueue LocalQueue {queue}: the run starts when Kueue admits "
                                          "it (kubectl get workloads shows why it waits)")
    return Phase(SUSPENDED, reason or r.SUSPENDED,
                 message or "suspended (spec.suspend: true): no pods run; set spec.suspend: false to resume")


def phase_of(mpijob: Optional[Mapping[str, Any]], workload: Optional[Mapping[str, Any]] = None) -> Phase:
    """`workload`: Kueue's Workload of a queued MPIJob, read while Kueue holds it (held_by_kueue)."""
    if mpijob is None:
        return Phase(PENDING, r.MPIJOB_MISSING, "the MPIJob of this run does not exist yet")
    conditions = (mpijob.get("status") or {}).get("conditions") or []
    for ctype, phase in (("Failed", FAILED), ("Succeeded", SUCCEEDED), ("Suspended", SUSPENDED),
                         ("Restarting", RUNNING), ("Running", RUNNING), ("Created", PENDING)):
        c = find(conditions, ctype)
        if c is not None and c.get("status") == "True":
            if phase == SUSPENDED:
                return _suspended(mpijob, str(c.get("reason") or ""), "", workload)
            return Phase(phase, str(c.get("reason") or ctype), str(c.get("message") or ""))
    if ((mpijob.get("spec") or {}).get("runPolicy") or {}).get("suspend"):
        return _suspended(mpijob, "", "", workload)
    name = (mpijob.get("metadata") or {}).get("name", "")
    return Phase(PENDING, r.MPIJOB_PENDING, f"MPIJob {name} created, waiting for the MPI Operator")
