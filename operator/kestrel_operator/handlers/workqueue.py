"""The work queue between watch events and reconcile passes (client-go's rate-limited workqueue, small).

- Keys, not events: many events for one resource while it waits collapse into one pass.
- One pass per key at a time; a key added while its pass runs is run once more afterwards.
- A failed pass (an API error) is retried with exponential backoff per key (base * 2^(n-1), capped);
  a successful pass resets it. A pass may ask to come back later (waiting for an old run's pods).
- A few worker threads run the passes (the reconciler's API client is blocking).

Nothing here knows Kubernetes: `process(key)` does the work; tests drive it with `run_ready()` and a
fake clock instead of threads.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Optional

log = logging.getLogger(__name__)

BASE_DELAY = 0.5
MAX_DELAY = 300.0


class WorkQueue:
    def __init__(self, process: Callable[[Hashable], Optional[float]], base_delay: float = BASE_DELAY,
                 max_delay: float = MAX_DELAY, clock: Callable[[], float] = time.monotonic) -> None:
        self._process = process
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._clock = clock
        self._cv = threading.Condition()
        self._ready: OrderedDict[Hashable, None] = OrderedDict()
        self._due: dict[Hashable, float] = {}  # key -> earliest time it is wanted again
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self.failures: dict[Hashable, int] = {}
        self._threads: list[threading.Thread] = []
        self._stopped = False
        self.passes = 0

    # -- adding ----------------------------------------------------------------------------------
    def add(self, key: Hashable) -> None:
        with self._cv:
            if key in self._processing:
                self._dirty.add(key)
            elif key not in self._ready:
                self._ready[key] = None
                self._cv.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        """Run `key` again in `delay` seconds (an earlier request for it wins)."""
        if delay <= 0:
            self.add(key)
            return
        with self._cv:
            due = self._clock() + delay
            if self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cv.notify()

    def backoff(self, key: Hashable) -> float:
        """The delay before retrying `key` after its n-th failure in a row."""
        n = self.failures.get(key, 1)
        return min(self.max_delay, self.base_delay * 2 ** (n - 1))

    def forget(self, key: Hashable) -> None:
        """The resource is gone: drop its backoff and pending retries."""
        with self._cv:
            self.failures.pop(key, None)
            self._due.pop(key, None)
            self._ready.pop(key, None)

    # -- taking ----------------------------------------------------------------------------------
    def _promote(self) -> Optional[float]:
        """Move due keys to ready; return seconds until the next one (None if none)."""
        now = self._clock()
        while self._heap:
            due, _, key = self._heap[0]
            if self._due.get(key) != due:
                heapq.heappop(self._heap)  # superseded by an earlier request, or forgotten
                continue
            if due > now:
                return due - now
            heapq.heappop(self._heap)
            del self._due[key]
            if key in self._processing:
                self._dirty.add(key)
            else:
                self._ready.setdefault(key, None)
        return None

    def _take(self) -> Optional[Hashable]:
        for key in self._ready:
            if key not in self._processing:
                del self._ready[key]
                self._processing.add(key)
                return key
        return None

    def _done(self, key: Hashable, error: Optional[BaseException], requeue_after: Optional[float]) -> None:
        with self._cv:
            self._processing.discard(key)
            self.passes += 1
            if error is not None:
                self.failures[key] = self.failures.get(key, 0) + 1
                delay = self.backoff(key)
                log.warning("reconcile %s failed (%s in a row), retrying in %.1fs: %s", key, self.failures[key],
                            delay, error)
            else:
                self.failures.pop(key, None)
                delay = requeue_after
            if key in self._dirty:
                self._dirty.discard(key)
                self._ready.setdefault(key, None)
                self._cv.notify()
        if delay:
            self.add_after(key, delay)

    def _run(self, key: Hashable) -> None:
        try:
            requeue_after = self._process(key)
        except Exception as err:  # noqa: BLE001 - any failure is retried with backoff, never lost
            self._done(key, err, None)
        else:
            self._done(key, None, requeue_after)

    # -- driving ---------------------------------------------------------------------------------
    def run_ready(self) -> int:
        """Run every key that is due now in the calling thread (tests); returns how many passes ran."""
        ran = 0
        while True:
            with self._cv:
                self._promote()
                key = self._take()
            if key is None:
                return ran
            self._run(key)
            ran += 1

    def _worker(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._stopped:
                        return
                    wait = self._promote()
                    key = self._take()
                    if key is not None:
                        break
                    self._cv.wait(timeout=wait)
            self._run(key)

    def start(self, workers: int) -> None:
        for i in range(workers):
            thread = threading.Thread(target=self._worker, name=f"kestrel-reconcile-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    def pending(self) -> int:
        with self._cv:
            return len(self._ready) + len(self._due) + len(self._processing)
