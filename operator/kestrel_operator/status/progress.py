"""Training progress in status.progress: written by the trainer's rank 0, kept or dropped here.

The trainer patches `status.progress` directly (the operator never writes epochs). The operator only
drops progress that belongs to another run (an older generation's run still reporting while it is
deleted), recognised by `progress.run`, the MPIJob name the trainer got in its environment
(kestrel_trainer.spec.contract: the fields and the variable are defined there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from kestrel_trainer.spec.contract import PROGRESS_EPOCH, PROGRESS_RUN


def progress_for_run(progress: Optional[Mapping[str, Any]], run: Optional[str]) -> Optional[dict[str, Any]]:
    """`progress` if it belongs to `run` (or names no run), else None."""
    if not progress:
        return None
    owner = progress.get(PROGRESS_RUN)
    if owner and owner != run:
        return None
    return dict(progress)


def merge_progress(old: Optional[Mapping[str, Any]], new: Mapping[str, Any]) -> dict[str, Any]:
    """A report merged over the previous one of the same run: a late report for an earlier epoch
    (ranks and retries can race) never moves the epoch backwards; a new run replaces everything."""
    if not old or old.get(PROGRESS_RUN) != new.get(PROGRESS_RUN):
        return dict(new)
    if int(new.get(PROGRESS_EPOCH) or 0) < int(old.get(PROGRESS_EPOCH) or 0):
        return dict(old)
    return {**old, **new}
