"""What `kubectl kestrel` shows while it follows a run: status changes, progress, the launcher's log lines.

On a terminal, a tqdm bar (percent of the run's steps, epoch, the trainer's ETA, the latest metrics, all from
status.progress, which rank 0 writes) kept below the log lines; anywhere else (CI logs, pipes), one plain line per
new progress report at most every KESTREL_PROGRESS_SECONDS (default 10; a new epoch is always shown), never both.
The ETA is the trainer's (measured from its step time), not a guess from here.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import IO, Any, Optional

from kestrel_trainer.progress import is_terminal, terminal_size
from kestrel_trainer.spec.contract import (
    PROGRESS_EPOCH,
    PROGRESS_ETA,
    PROGRESS_MAX_EPOCH,
    PROGRESS_PERCENT,
    PROGRESS_SECONDS_ENV,
    PROGRESS_TOP1,
    PROGRESS_TOP_K_VALUE,
    PROGRESS_TOPK,
    PROGRESS_TRACKER_RUN,
    PROGRESS_VAL_ACCURACY,
)

DEFAULT_SECONDS = 10.0
# status.progress metric -> how lines name it (the trainer's own log words: loss, acc, val_loss, val_acc).
METRICS = (("loss", "loss"), ("accuracy", "acc"), ("valLoss", "val_loss"), (PROGRESS_VAL_ACCURACY, "val_acc"))


def plain_seconds() -> float:
    raw = os.environ.get(PROGRESS_SECONDS_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_SECONDS
    return value if value >= 0 else DEFAULT_SECONDS


def percent_of(progress: Mapping[str, Any]) -> Optional[int]:
    """status.progress.percent, else the finished epochs' share."""
    if progress.get(PROGRESS_PERCENT) is not None:
        return max(0, min(100, int(progress[PROGRESS_PERCENT])))
    epoch, total = progress.get(PROGRESS_EPOCH), progress.get(PROGRESS_MAX_EPOCH)
    return (100 * int(epoch)) // int(total) if epoch is not None and total else None


def metrics_text(progress: Mapping[str, Any]) -> str:
    return ", ".join(f"{word} {float(progress[key]):.4f}" for key, word in METRICS if progress.get(key) is not None)


def progress_line(progress: Mapping[str, Any]) -> str:
    """`epoch 2/5 (40%), ETA 1m30s, loss 0.5123, acc 0.8100, val_loss 0.6100, val_acc 0.8750`."""
    parts = []
    if progress.get(PROGRESS_EPOCH) is not None:
        total = progress.get(PROGRESS_MAX_EPOCH)
        parts.append(f"epoch {progress[PROGRESS_EPOCH]}/{total if total is not None else '?'}")
    percent = percent_of(progress)
    if percent is not None:
        parts[-1:] = [f"{parts[-1]} ({percent}%)"] if parts else [f"{percent}%"]
    if progress.get(PROGRESS_ETA):
        parts.append(f"ETA {progress[PROGRESS_ETA]}")
    metrics = metrics_text(progress)
    if metrics:
        parts.append(metrics)
    return ", ".join(parts)


def evaluation_line(progress: Mapping[str, Any]) -> str:
    """`top-1 0.8125, top-3 0.9500` from the trainer's end-of-run evaluation, '' without one."""
    parts = []
    if progress.get(PROGRESS_TOP1) is not None:
        parts.append(f"top-1 {float(progress[PROGRESS_TOP1]):.4f}")
    if progress.get(PROGRESS_TOPK) is not None:
        parts.append(f"top-{progress.get(PROGRESS_TOP_K_VALUE) or 'k'} {float(progress[PROGRESS_TOPK]):.4f}")
    return ", ".join(parts)


class RunView:
    """One followed run on `stream`: `update(obj)` after each read of the resource, `log(line)` from any thread."""

    def __init__(self, stream: IO[str], label: str, bar: Optional[bool] = None,
                 interval: Optional[float] = None) -> None:
        self.stream = stream
        self.label = label
        self.interval = plain_seconds() if interval is None else interval
        self._lock = threading.Lock()
        self._state: tuple[str, str] = ("", "")
        self._shown: Optional[tuple] = None  # the last progress report shown (epoch, percent, eta, updateTime)
        self._shown_epoch: Any = None
        self._last_line = 0.0
        self._tracker = ""
        self._bar = None
        if bar if bar is not None else is_terminal(stream):
            from tqdm import tqdm

            # a terminal that reports no size (a fresh pseudo-terminal: 0 x 0) gets 100 x 24, else tqdm hides the bar
            columns, lines = terminal_size(stream)
            self._bar = tqdm(total=100, file=stream, desc=label, unit="%", leave=True,
                             dynamic_ncols=bool(columns and lines), ncols=None if columns else 100,
                             nrows=None if lines else 24, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    @property
    def is_bar(self) -> bool:
        return self._bar is not None

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def say(self, line: str) -> None:
        with self._lock:
            self._write(line)

    def log(self, line: str) -> None:
        self.say(line)

    def update(self, obj: Mapping[str, Any]) -> None:
        status = obj.get("status") or {}
        with self._lock:
            state = (str(status.get("phase") or ""), str(status.get("reason") or ""))
            if state != self._state and state[0]:
                self._state = state
                message = status.get("message") or ""
                self._write(f"{self.label}: {state[0]}" + (f" ({state[1]})" if state[1] else "")
                            + (f": {message}" if message else ""))
            progress = status.get("progress") or {}
            tracker = progress.get(PROGRESS_TRACKER_RUN)
            if tracker and tracker != self._tracker:
                self._tracker = str(tracker)
                self._write(f"{self.label}: tracker run {tracker}")
            if progress.get(PROGRESS_EPOCH) is not None or progress.get(PROGRESS_PERCENT) is not None:
                self._progress(progress)

    def _progress(self, progress: Mapping[str, Any]) -> None:
        key = (progress.get(PROGRESS_EPOCH), progress.get(PROGRESS_PERCENT), progress.get(PROGRESS_ETA),
               progress.get("updateTime"))
        if key == self._shown:
            return
        if self._bar is not None:
            self._shown = key
            percent = percent_of(progress) or 0
            self._bar.n = percent
            epoch = progress.get(PROGRESS_EPOCH)
            postfix = [f"epoch {epoch}/{progress.get(PROGRESS_MAX_EPOCH)}"] if epoch is not None else []
            if progress.get(PROGRESS_ETA):
                postfix.append(f"ETA {progress[PROGRESS_ETA]}")
            metrics = metrics_text(progress)
            if metrics:
                postfix.append(metrics)
            self._bar.set_postfix_str(", ".join(postfix), refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        new_epoch = progress.get(PROGRESS_EPOCH) != self._shown_epoch
        if new_epoch or now - self._last_line >= self.interval:
            self._shown, self._shown_epoch, self._last_line = key, progress.get(PROGRESS_EPOCH), now
            self._write(f"{self.label}: {progress_line(progress)}")

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
