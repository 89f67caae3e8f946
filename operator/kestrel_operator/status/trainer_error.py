"""The trainer's own one-line error, read from the launcher pod's termination message.

The trainer reports bad input as one line, `<prog>: error: <message>` (kestrel_trainer.spec.contract),
and exits non-zero. The launcher container has terminationMessagePolicy FallbackToLogsOnError
(manifests/pods.py), so kubelet copies the tail of its log (80 lines / 2 KiB at most) into the pod's
status when it fails: with mpirun in front, the ranks' stderr is in that log, followed by mpirun's own
banner. The MPIJob only says the launcher Job failed; this line says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional

from kestrel_trainer.spec.contract import ERROR_LINE

MAX_LENGTH = 1024  # events and printer columns stay readable; the full log is one `kubectl logs` away


def _terminated_messages(pod: Mapping[str, Any]) -> list[str]:
    out = []
    for cs in (pod.get("status") or {}).get("containerStatuses") or ():
        for state in (cs.get("state") or {}, cs.get("lastState") or {}):
            message = (state.get("terminated") or {}).get("message")
            if message:
                out.append(str(message))
    return out


def error_line(message: str) -> Optional[str]:
    """The last trainer error line in a termination message (mpirun's banner may follow it)."""
    lines = [ln.strip() for ln in message.splitlines() if ERROR_LINE.match(ln.strip())]
    return lines[-1][:MAX_LENGTH] if lines else None


def trainer_error(launcher_pods: Iterable[Mapping[str, Any]]) -> Optional[str]:
    """The last trainer error line in the newest launcher pod that has one; None if none says anything."""
    pods = sorted(launcher_pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""),
                  reverse=True)
    for pod in pods:
        for message in _terminated_messages(pod):
            line = error_line(message)
            if line:
                return line
    return None
