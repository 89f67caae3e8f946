"""Which trainer ranks run in this container, so the container's PID 1 (`kestrel-worker`, cli/worker.py) can
ask them to stop.

In a multi-pod run the ranks are children of orted, which sshd started for mpirun: the SIGTERM Kubernetes sends
to a pod's PID 1 never reaches them by itself. While a rank can stop gracefully (its stop handler is installed,
train/callbacks.py `Preemption`), it keeps a file named after its pid in the ranks folder, holding its start time
(so that a pid the kernel gave to another process after the rank died is never signalled) and its rank. Ranks
that sshd starts inherit none of the pod's environment, so in a pod both sides use DEFAULT_RANKS_DIR, under
/dev/shm: the operator mounts an emptyDir there in every trainer pod, writable even when the root file system is
read-only; KESTREL_RANKS_DIR moves it (tests). Standard library only: the entrypoint imports this, no TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger("kestrel.train")

RANKS_DIR_ENV = "KESTREL_RANKS_DIR"
DEFAULT_RANKS_DIR = "/dev/shm/kestrel-ranks"


@dataclass(frozen=True)
class RegisteredRank:
    pid: int
    rank: int
    started: str  # start time, as start_time() gives it


def ranks_dir(env: Optional[Mapping[str, str]] = None) -> str:
    env = os.environ if env is None else env
    return env.get(RANKS_DIR_ENV) or DEFAULT_RANKS_DIR


def live_stat(pid: int) -> Optional[list[str]]:
    """/proc/PID/stat's fields from the state on (field 3: state, 4: parent pid, ...), or None when there is no such
    process or it has exited (a zombie waiting to be reaped is gone for us)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": comm may hold spaces and parentheses
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields


def start_time(pid: int) -> Optional[str]:
    """The process' start time in clock ticks since boot (/proc/PID/stat field 22), or None when there is no such
    process or it has exited."""
    fields = live_stat(pid)
    return fields[19] if fields else None


def register(rank: int, folder: Optional[str] = None) -> Optional[str]:
    """Record this process as rank `rank`; returns the file to pass to `unregister`, or None when it cannot be
    written (logged: the rank then still stops on a signal sent to it, just not on its pod's SIGTERM)."""
    folder = folder or ranks_dir()
    pid = os.getpid()
    started = start_time(pid)
    if started is None:  # no /proc (not Linux): nothing could check the record
        return None
    path = os.path.join(folder, str(pid))
    try:
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
            with contextlib.suppress(OSError):  # shared like /tmp: another user's ranks on this machine may come
                os.chmod(folder, 0o1777)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{pid} {started} {rank}\n")
        os.replace(tmp, path)
    except OSError as err:
        log.warning("cannot register rank %d in %s (%s): a SIGTERM to this pod's PID 1 will not reach it", rank,
                    folder, err)
        return None
    return path


def unregister(path: Optional[str]) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.remove(path)


def registered(folder: Optional[str] = None) -> list[RegisteredRank]:
    """The registered ranks that are still running (stale records, e.g. of a killed rank, are skipped)."""
    folder = folder or ranks_dir()
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    out = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(folder, name), encoding="ascii") as fh:
                pid, started, rank = fh.read().split()
        except (OSError, ValueError):
            continue
        if pid == name and start_time(int(pid)) == started:
            out.append(RegisteredRank(int(pid), int(rank), started))
    return out


def running(rank: RegisteredRank) -> bool:
    """Whether a rank found by `registered` is still running (not exited, not a zombie, its pid not reused)."""
    return start_time(rank.pid) == rank.started
