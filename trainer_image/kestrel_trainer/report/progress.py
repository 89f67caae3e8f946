"""How far a run is and how long it still needs, from step counts and seconds (pure; no TensorFlow).

The time per step is measured in the reporting process only (wall time since its first step, validation
passes included, over the steps it ran), so a resumed run does not count the earlier process's steps as
instant ones. The estimate is written like kubectl's ages: 45s, 4m10s, 1h2m, 3d4h.
"""

from __future__ import annotations

from typing import Optional

from kestrel_trainer.progress import format_duration  # noqa: F401 - part of this module's API

MID_EPOCH_REPORT_SECONDS = 30.0  # at most one cluster status report this often inside an epoch


def steps_done(epochs_done: int, steps_into_epoch: int, steps_per_epoch: int) -> int:
    """Training steps of the whole run done so far."""
    return epochs_done * steps_per_epoch + steps_into_epoch


def percent_done(done: int, total: int) -> int:
    """Whole percent of `total` steps done, rounded down (100 only when every step is done), within 0..100."""
    if total <= 0:
        return 100
    return max(0, min(100, (100 * done) // total))


def eta_text(elapsed: Optional[float], steps_measured: int, remaining: int) -> str:
    """Time left for `remaining` steps at the measured rate (`steps_measured` steps in `elapsed` seconds):
    "0s" when none remain, "" before anything was measured."""
    if remaining <= 0:
        return "0s"
    if elapsed is None or steps_measured <= 0:
        return ""
    return format_duration(elapsed / steps_measured * remaining)
