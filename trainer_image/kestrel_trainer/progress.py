"""Progress of a long local command (evaluate, inference, export, prune, dataset import, the image check).

One helper for every command: on a terminal, a tqdm bar with rate and ETA on stderr; anywhere else (pod logs,
files, pipes), a plain log line at most every `KESTREL_PROGRESS_SECONDS` seconds (default 10) and one at the
end, never both; nothing where INFO is not logged (the ranks other than 0 of a training run). Pure Python, no
TensorFlow; it sits below every other layer so that data, commands and reports can all use it.

    for batch in progress(batches, total=n, desc="evaluate", unit="batch"):
        ...
    with Progress(total=n, desc="calibration", unit="batch") as bar:
        ...; bar.update(1)
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Optional, TypeVar

T = TypeVar("T")

PROGRESS_SECONDS_ENV = "KESTREL_PROGRESS_SECONDS"
DEFAULT_PLAIN_SECONDS = 10.0
log = logging.getLogger("kestrel.progress")


def format_duration(seconds: float) -> str:
    """kubectl's style, the two largest units, a zero second unit left out: 45s, 4m10s, 4m, 1h2m, 3d4h."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        minutes, rest = divmod(s, 60)
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if s < 86400:
        hours, rest = divmod(s, 3600)
        return f"{hours}h{rest // 60}m" if rest // 60 else f"{hours}h"
    days, rest = divmod(s, 86400)
    return f"{days}d{rest // 3600}h" if rest // 3600 else f"{days}d"


def plain_interval() -> float:
    """Seconds between plain progress lines: $KESTREL_PROGRESS_SECONDS (a number >= 0), else 10."""
    raw = os.environ.get(PROGRESS_SECONDS_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_PLAIN_SECONDS
    return value if value >= 0 else DEFAULT_PLAIN_SECONDS


def plain_line(desc: str, done: int, total: Optional[int], unit: str, elapsed: float) -> str:
    """`evaluate: 40/100 batch (40%), 12s elapsed, ETA 18s` (without a total: count, elapsed and rate)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        pct = max(0, min(100, (100 * done) // total))
        eta = format_duration((total - done) / rate) if rate > 0 and done < total else ("0s" if done >= total else "?")
        return f"{desc}: {done}/{total} {unit} ({pct}%), {format_duration(elapsed)} elapsed, ETA {eta}"
    return f"{desc}: {done} {unit}, {format_duration(elapsed)} elapsed, {rate:.1f} {unit}/s"


class Progress:
    """A progress counter shown as a tqdm bar on a terminal, else as periodic plain log lines."""

    def __init__(self, total: Optional[int] = None, desc: str = "", unit: str = "it",
                 stream: Optional[IO[str]] = None, interval: Optional[float] = None) -> None:
        self.total = total if total is None else int(total)
        self.desc, self.unit = desc, unit
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval = plain_interval() if interval is None else interval
        self._start = time.monotonic()
        self._last_line = self._start
        self._closed = False
        self._bar = None
        # Quiet where INFO is not logged (the other ranks of a training run, library use without logging set up):
        # neither a bar nor lines, so only rank 0 draws one.
        self._quiet = not log.isEnabledFor(logging.INFO)
        tqdm = _tqdm() if not self._quiet and is_terminal(self.stream) else None
        if tqdm is not None:  # a terminal: the bar (rate, ETA), redrawn in place
            # a terminal that reports no size (a fresh pseudo-terminal: 0 x 0) gets 100 x 24, else tqdm hides the bar
            columns, lines = terminal_size(self.stream)
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream, leave=True,
                             dynamic_ncols=bool(columns and lines), ncols=None if columns else 100,
                             nrows=None if lines else 24)

    @property
    def is_bar(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self._quiet:
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval and (self.total is None or self.done < self.total):
            self._last_line = now
            log.info("%s", plain_line(self.desc, self.done, self.total, self.unit, now - self._start))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.done and not self._quiet:  # the final line: how many and how long
            log.info("%s", plain_line(self.desc, self.done, self.total, self.unit, time.monotonic() - self._start))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[T], total: Optional[int] = None, desc: str = "", unit: str = "it",
             stream: Optional[IO[str]] = None, interval: Optional[float] = None) -> Iterator[T]:
    """Yield `iterable`'s items, counting each one (total: len(iterable) when it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total=total, desc=desc, unit=unit, stream=stream, interval=interval) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def is_terminal(stream: IO[str]) -> bool:
    """Whether `stream` is a terminal (False for a closed or file-less stream); the client's bar uses it too."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def terminal_size(stream: IO[str]) -> tuple[int, int]:
    """The terminal's (columns, lines); (0, 0) when it cannot be asked."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return 0, 0
    return size.columns, size.lines


def _tqdm():
    """tqdm's bar class (the trainer extra installs it); without it, plain lines on a terminal too."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm
