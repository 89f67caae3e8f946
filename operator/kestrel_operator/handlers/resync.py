"""Reconcile every resource once: what a replica does when it becomes the leader.

Followers drop watch events (handlers ask `leader.is_leader()`), so a new leader cannot rely on kopf's initial
listing, which happened while it was a follower. It lists the three kinds itself, in each watched namespace or
cluster-wide, and runs the same pass as an event would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kestrel_operator import API_VERSION
from kestrel_operator.handlers.kopf_handlers import _reconcile, reconciler
from kestrel_operator.resources.types import KINDS

log = logging.getLogger(__name__)


def resync(namespaces: Sequence[str]) -> int:
    """Reconcile every ClassificationTrain/Prune/Export in `namespaces` (empty: all); returns how many."""
    api = reconciler().api
    count = 0
    for kind in KINDS:
        for ns in namespaces or ("",):
            for obj in api.list(API_VERSION, kind, ns):
                obj.setdefault("apiVersion", API_VERSION)
                obj.setdefault("kind", kind)
                _reconcile(obj, log)
                count += 1
    log.info("resync after becoming leader: %d resource(s) reconciled", count)
    return count
