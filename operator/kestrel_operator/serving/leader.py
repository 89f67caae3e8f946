"""Leader election on a coordination.k8s.io/v1 Lease, so that of several replicas exactly one reconciles.

The algorithm is client-go's: the holder renews the Lease every `lease_seconds / 5`; another replica takes it
over only after it has watched the same record stay unchanged for `lease_seconds` (its own clock, so clock skew
between nodes does not matter); every write is conditional on the resourceVersion read, so two candidates never
both win. A leader that could not renew for 2/3 of the lease duration stops reconciling before anyone else may
start. Followers keep serving the webhook, health and metrics; the handlers ask `is_leader()` before each pass,
and a new leader reconciles every known resource once (its `on_started_leading` callback).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from kestrel_operator.kube import KubeError

log = logging.getLogger(__name__)
LEASE_API = "coordination.k8s.io/v1"


def _micro_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: Any, namespace: str, name: str, identity: str, lease_seconds: int = 15,
                 on_started_leading: Optional[Callable[[], None]] = None,
                 on_stopped_leading: Optional[Callable[[], None]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.lease_seconds = lease_seconds
        self.retry_seconds = max(lease_seconds / 5, 0.5)
        self.renew_deadline = lease_seconds * 2 / 3
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.clock = clock
        self._leading = False
        self._renewed_at = float("-inf")
        self._observed: Optional[tuple[Any, ...]] = None
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- state
    def is_leader(self) -> bool:
        return self._leading and self.clock() - self._renewed_at < self.renew_deadline

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        log.info("leader election: %s %s Lease %s/%s", self.identity, "acquired" if leading else "lost",
                 self.namespace, self.name)
        callback = self.on_started_leading if leading else self.on_stopped_leading
        if callback is not None:
            try:
                callback()
            except Exception:  # a failing callback must not stop the election loop
                log.exception("leader election: %s callback failed", "start" if leading else "stop")

    # -- one round
    def _spec(self, transitions: int, acquire: bool) -> dict[str, Any]:
        now = _micro_now()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds, "renewTime": now,
                "leaseTransitions": transitions}
        if acquire:
            spec["acquireTime"] = now
        return spec

    def try_acquire_or_renew(self) -> bool:
        """One round; True when this replica holds the Lease afterwards."""
        lease = self.api.get(LEASE_API, "Lease", self.namespace, self.name)
        if lease is None:
            body = {"apiVersion": LEASE_API, "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(0, True)}
            return self._won(self.api.create(body))
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = self.clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        mine = holder == self.identity
        if not mine and holder and now - self._observed_at < duration:
            return self._won(False)  # someone else holds a live lease
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                 "spec": self._spec(transitions, acquire=not mine)}
        return self._won(self.api.patch(LEASE_API, "Lease", self.namespace, self.name, patch))

    def _won(self, won: object) -> bool:
        """`won`: what the API call returned (create gives the new resourceVersion, patch a bool)."""
        won = bool(won)
        if won:
            self._renewed_at = self.clock()
        return won

    # -- the loop
    def step(self) -> bool:
        """One round and its consequence (callbacks on a change); True while this replica may reconcile."""
        try:
            held = self.try_acquire_or_renew()
        except (KubeError, OSError) as err:
            log.warning("leader election: %s", err)
            held = False
        except Exception as err:  # e.g. the client's own connection errors
            log.warning("leader election: %s: %s", type(err).__name__, err)
            held = False
        # A failed renewal keeps leadership until the renew deadline: one lost request is no failover.
        self._set_leading(held or self.is_leader())
        return self.is_leader()

    def run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.retry_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop the loop; the leader gives the Lease up so a follower takes over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.retry_seconds + 5)
        if release and self._leading:
            try:
                lease = self.api.get(LEASE_API, "Lease", self.namespace, self.name)
                if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                    self.api.patch(LEASE_API, "Lease", self.namespace, self.name, {
                        "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                        "spec": {"holderIdentity": None, "leaseDurationSeconds": 1}})
            except Exception as err:  # best effort on the way out
                log.warning("leader election: could not release the Lease: %s", err)
        self._set_leading(False)


_current: Optional[LeaderElector] = None


def install(elector: Optional[LeaderElector]) -> None:
    global _current
    _current = elector


def is_leader() -> bool:
    """True on the replica that may reconcile: the Lease holder, or every replica without leader election."""
    return _current is None or _current.is_leader()
