"""kopf wiring: which watch events trigger a reconcile pass. Nothing else lives here.

Event handlers only (no timers or daemons): kopf puts a finalizer on resources that have timers, and
a finalizer would block `kubectl delete` whenever the operator is down. Level-triggering comes from
watching three things instead: the resource itself (including the initial listing at start-up, so a
restarted operator resumes everything), its MPIJobs (status mirroring), and its upstream resource (a
Prune waiting for a Train is reconciled when that Train changes).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import kopf

from kestrel_operator import GROUP, MANAGED_BY, VERSION
from kestrel_operator.handlers.reconcile import Reconciler
from kestrel_operator.kube import KubeApi, KubeError
from kestrel_operator.manifests.names import MANAGED_BY_LABEL
from kestrel_operator.resources.types import KINDS
from kestrel_operator.serving import leader, metrics
from kestrel_operator.settings import Settings, from_env

log = logging.getLogger(__name__)
_state: dict[str, Any] = {}
_locks: dict[tuple[str, str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(body: Any) -> threading.Lock:
    meta = body.get("metadata") or {}
    key = (body.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def reconciler() -> Reconciler:
    """The process-wide reconciler (created on first use so importing this module needs no cluster)."""
    if "reconciler" not in _state:
        settings: Settings = _state.get("settings") or from_env()
        _state["reconciler"] = Reconciler(KubeApi(), settings)
    return _state["reconciler"]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # We post our own Events for transitions and errors; kopf's per-handler ones would be noise.
    settings.posting.level = logging.ERROR
    settings.watching.server_timeout = 300


def _reconcile(body: Any, logger: logging.Logger) -> None:
    """One pass at a time per resource, on a fresh read: the resource's own watch and its MPIJob's
    watch fire concurrently, and two passes on the same stale status would post the same Event twice."""
    if not leader.is_leader():
        return  # a follower replica: the Lease holder reconciles (serving/leader.py)
    rec = reconciler()
    meta = body.get("metadata") or {}
    try:
        with _lock_for(body):
            fresh = rec.api.get(body["apiVersion"], body["kind"], meta["namespace"], meta["name"])
            if fresh is None or (fresh.get("metadata") or {}).get("uid") != meta.get("uid"):
                return
            outcome = rec.reconcile(fresh)
    except KubeError as err:
        metrics.observe(body, "error", [])
        logger.warning("reconcile failed, will retry on the next event: %s", err)
        return
    metrics.observe(fresh, "ok", outcome.created)
    for etype, reason, message in outcome.events:
        logger.info("%s %s: %s", etype, reason, message)
    if outcome.status_patch and outcome.status_patch.get("phase") == "Succeeded":
        for dependent in reconciler().dependents(body):
            _reconcile(dependent, logger)


def on_resource_event(type: str, body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    """Any change of a ClassificationTrain/Prune/Export, and each one listed at start-up."""
    if type == "DELETED":
        return
    _reconcile(dict(body), logger)


def on_mpijob_event(type: str, body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    """An MPIJob we created changed: reconcile its owner (mirrors status within one watch event)."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") in KINDS and ref.get("controller"):
            owner = reconciler().api.get(ref["apiVersion"], ref["kind"], meta["namespace"], ref["name"])
            if owner is not None and (owner.get("metadata") or {}).get("uid") == ref.get("uid"):
                _reconcile(owner, logger)


for _plural in KINDS.values():
    kopf.on.event(GROUP, VERSION, _plural)(on_resource_event)
kopf.on.event("kubeflow.org", "v2beta1", "mpijobs", labels={MANAGED_BY_LABEL: MANAGED_BY})(on_mpijob_event)
