"""Prometheus metrics of the reconciler, served on KESTREL_METRICS_PORT (the chart's metrics Service).

- kestrel_reconciles_total{kind, result}: reconcile passes; result is ok (including a pass that found the
  resource InvalidSpec) or error (an API call failed; retried on the next event).
- kestrel_reconcile_errors_total{kind}: passes that ended in an API error (the same as result="error", kept
  separate so an alert needs no label filter).
- kestrel_mpijobs_created_total{kind}: runs started.
- kestrel_apply_to_mpijob_seconds{kind}: from the user's write of the generation that starts a run (the newest
  non-status managedFields time, else creationTimestamp; 1 s resolution) to the MPIJob's creation.
- kestrel_is_leader: 1 on the replica holding the leader Lease (or the only replica).
- kestrel_webhook_certificate_expiry_timestamp_seconds: notAfter of the certificate this replica's webhook serves
  (unset until it serves one); alert when it comes near `time()`: the replica is not reloading.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any, Optional

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

log = logging.getLogger(__name__)

RECONCILES = Counter("kestrel_reconciles", "Reconcile passes by kind and result", ["kind", "result"])
ERRORS = Counter("kestrel_reconcile_errors", "Reconcile passes that failed on an API error", ["kind"])
MPIJOBS = Counter("kestrel_mpijobs_created", "MPIJobs created (runs started)", ["kind"])
APPLY_TO_MPIJOB = Histogram(
    "kestrel_apply_to_mpijob_seconds", "Seconds from the resource's spec write to its MPIJob's creation", ["kind"],
    buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600),
)
IS_LEADER = Gauge("kestrel_is_leader", "1 when this replica reconciles (holds the leader Lease)")
WEBHOOK_CERT_EXPIRY = Gauge("kestrel_webhook_certificate_expiry_timestamp_seconds",
                            "notAfter (Unix time) of the certificate the admission webhook serves")


def _time(value: Optional[str]) -> Optional[dt.datetime]:
    if not value:
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def spec_written_at(body: Mapping[str, Any]) -> Optional[dt.datetime]:
    """When the user last wrote the object (not its status): the start of the apply->MPIJob latency."""
    meta = body.get("metadata") or {}
    times = [_time(f.get("time")) for f in meta.get("managedFields") or [] if not f.get("subresource")]
    times = [t for t in times if t is not None]
    return max(times) if times else _time(meta.get("creationTimestamp"))


def observe(body: Mapping[str, Any], result: str, created: list[str], now: Optional[dt.datetime] = None) -> None:
    """Count one pass of `body`; `created` is the reconciler's Outcome.created (`Kind/name` strings)."""
    kind = str(body.get("kind", ""))
    RECONCILES.labels(kind=kind, result=result).inc()
    if result == "error":
        ERRORS.labels(kind=kind).inc()
    if any(c.startswith("MPIJob/") for c in created):
        MPIJOBS.labels(kind=kind).inc()
        start = spec_written_at(body)
        if start is not None:
            now = now or dt.datetime.now(dt.timezone.utc)
            APPLY_TO_MPIJOB.labels(kind=kind).observe(max((now - start).total_seconds(), 0.0))


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a daemon thread (prometheus_client's own)."""
    disable_created_metrics()  # no `*_created` timestamp series next to each counter
    start_http_server(port, addr=addr)
    log.info("metrics on http://%s:%d/metrics", addr, port)
