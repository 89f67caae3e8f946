"""kopf wiring: which watch events put which resource on the work queue. Nothing else lives here.

Event handlers only (no kopf timers or daemons): kopf puts a finalizer on resources that have timers,
and a finalizer would block `kubectl delete` whenever the operator is down. Level-triggering comes from
watching what a resource's status depends on, each event only naming the resource to reconcile:
- the resource itself (including the initial listing at start-up, so a restarted operator resumes
  everything);
- its MPIJobs (status mirroring) and its pods (why they are stuck; labelled managed-by kestrel-operator);
- ConfigMaps a waiting resource names in experimentSpecRef (SpecNotFound clears when it appears);
- the upstream resource (a Prune waiting for a Train is queued when that Train succeeds).
The work queue (`workqueue.py`) retries failed passes with backoff, and a resync task queues every
resource every KESTREL_RESYNC_SECONDS, so nothing depends on a single event arriving. Key Secrets are
not watched (that would need list/watch on every Secret): a missing one shows on the pods.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any, Optional

import kopf

from kestrel_operator import API_VERSION, GROUP, MANAGED_BY, VERSION
from kestrel_operator.handlers.reconcile import Reconciler
from kestrel_operator.handlers.workqueue import WorkQueue
from kestrel_operator.kube import KubeApi, KubeError, load_client_config
from kestrel_operator.manifests.names import MANAGED_BY_LABEL, kind_label
from kestrel_operator.resources.types import KINDS, ResourceMeta
from kestrel_operator.serving import leader, metrics
from kestrel_operator.settings import Settings, from_env

log = logging.getLogger(__name__)
# How soon a replica that does not hold the Lease looks at a queued key again (no API call meanwhile).
FOLLOWER_RETRY_SECONDS = 5.0
_state: dict[str, Any] = {}
# Watch timeouts: the API server ends each watch after server_timeout; the client gives up on a silent
# connection (a dropped TCP session) after client_timeout and kopf re-lists and watches again.
SERVER_TIMEOUT = 300
CLIENT_TIMEOUT = 330
CONNECT_TIMEOUT = 30
# kind_label(kind) -> kind, to find a pod's owner from its labels.
_KIND_BY_LABEL = {kind_label(ResourceMeta(kind, "", "", "", 1)): kind for kind in KINDS}


def operator_settings() -> Settings:
    if "settings" not in _state:
        _state["settings"] = from_env()
    return _state["settings"]


def reconciler() -> Reconciler:
    """The process-wide reconciler (created on first use so importing this module needs no cluster)."""
    if "reconciler" not in _state:
        ours = operator_settings()
        _state["reconciler"] = Reconciler(KubeApi(load_client_config(pool_size=ours.workers + 4)), ours)
    return _state["reconciler"]


class Controller:
    """The work queue, what each key means, and who waits for which ConfigMap."""

    def __init__(self, rec: Reconciler, queue: Optional[WorkQueue] = None) -> None:
        self.rec = rec
        self.queue = queue or WorkQueue(self.process)
        self._lock = threading.Lock()
        self._configmap_waiters: dict[tuple[str, str], set[Hashable]] = {}
        self._written: dict[Hashable, deque[tuple[str, Optional[int]]]] = {}
        rec.on_write = self._record

    def process(self, key: Hashable) -> Optional[float]:
        if not leader.is_leader():
            # A follower (or a leader whose renewal is late): the Lease holder reconciles. The key stays queued,
            # so nothing is lost when this replica leads again before the next resync.
            return FOLLOWER_RETRY_SECONDS
        kind, namespace, name = key  # type: ignore[misc]
        body = self.rec.api.get(API_VERSION, kind, namespace, name)
        if body is None:
            self.queue.forget(key)
            self._set_waiting(key, namespace, None)
            return None
        try:
            outcome = self.rec.reconcile(body)
        except KubeError:
            metrics.observe(body, "error", [])
            raise  # the work queue retries it with backoff
        metrics.observe(body, "ok", outcome.created)
        self._set_waiting(key, namespace, outcome.waits_for_configmap)
        for etype, reason, message in outcome.events:
            log.info("%s/%s %s %s: %s", namespace, name, etype, reason, message)
        if outcome.promoted:
            for dependent in self.rec.dependents(body):
                self.queue.add(key_of(dependent))
        return outcome.requeue_after

    def _set_waiting(self, key: Hashable, namespace: str, configmap: Optional[str]) -> None:
        with self._lock:
            for waiters in self._configmap_waiters.values():
                waiters.discard(key)
            if configmap:
                self._configmap_waiters.setdefault((namespace, configmap), set()).add(key)

    def _record(self, body: Mapping[str, Any], version: str, generation: Optional[int]) -> None:
        with self._lock:
            self._written.setdefault(key_of(body), deque(maxlen=8)).append((version, generation))

    def changed(self, key: Hashable, body: Mapping[str, Any], generation: Optional[int] = None) -> None:
        """Queue `key` for a watch event about `body` (the resource, with its `generation`, or its MPIJob),
        unless the event only reports what a pass of ours wrote itself: same resourceVersion, and for the
        resource the generation that pass reconciled (kopf may fold a spec edit made just before our status
        patch into the event of our patch; the generation tells)."""
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            ours = bool(version) and (version, generation) in self._written.get(key, ())
        if not ours:
            self.queue.add(key)

    def forget(self, key: Hashable) -> None:
        self.queue.forget(key)
        with self._lock:
            self._written.pop(key, None)

    def configmap_changed(self, namespace: str, name: str) -> None:
        with self._lock:
            waiters = list(self._configmap_waiters.get((namespace, name), ()))
        for key in waiters:
            self.queue.add(key)

    def resync(self, namespaces: tuple[str, ...]) -> int:
        """Queue every resource (in the watched namespaces, or all); returns how many."""
        count = 0
        for kind in KINDS:
            for namespace in namespaces or ("",):
                for obj in self.rec.api.list(API_VERSION, kind, namespace):
                    self.queue.add(key_of(obj))
                    count += 1
        return count


def key_of(body: Mapping[str, Any]) -> tuple[str, str, str]:
    meta = body.get("metadata") or {}
    return str(body.get("kind")), str(meta.get("namespace")), str(meta.get("name"))


def controller() -> Controller:
    if "controller" not in _state:
        _state["controller"] = Controller(reconciler())
    return _state["controller"]


def configure_settings(kopf_settings: kopf.OperatorSettings) -> None:
    # We post our own Events for transitions and errors; kopf's per-handler ones would be noise.
    kopf_settings.posting.level = logging.ERROR
    kopf_settings.watching.server_timeout = SERVER_TIMEOUT
    kopf_settings.watching.client_timeout = CLIENT_TIMEOUT
    kopf_settings.watching.connect_timeout = CONNECT_TIMEOUT


async def _resync_loop(ctl: Controller, every: float, namespaces: tuple[str, ...]) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            count = await asyncio.to_thread(ctl.resync, namespaces)
            log.debug("resync queued %d resources", count)
        except Exception as err:  # noqa: BLE001 - the next resync tries again
            log.warning("resync failed: %s", err)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure_settings(settings)
    ours = operator_settings()
    ctl = controller()
    ctl.queue.start(ours.workers)
    namespaces = tuple(_state.get("namespaces") or ours.watch_namespaces)
    _state["resync_task"] = asyncio.get_running_loop().create_task(
        _resync_loop(ctl, ours.resync_seconds, namespaces))


@kopf.on.cleanup()
async def stop(**_: Any) -> None:
    task = _state.pop("resync_task", None)
    if task is not None:
        task.cancel()
    controller().queue.stop()


async def on_resource_event(type: str, body: kopf.Body, **_: Any) -> None:
    """Any change of a ClassificationTrain/Prune/Export, and each one listed at start-up."""
    key = key_of(body)
    if type == "DELETED":
        controller().forget(key)
        return
    controller().changed(key, body, int((body.get("metadata") or {}).get("generation") or 1))


async def on_mpijob_event(body: kopf.Body, **_: Any) -> None:
    """An MPIJob we created changed: its owner's status mirrors it."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") in KINDS and ref.get("controller"):
            controller().changed((ref["kind"], meta.get("namespace"), ref["name"]), body)


async def on_pod_event(body: kopf.Body, **_: Any) -> None:
    """A pod of a run changed (scheduled, pulling, crashing, gone): its resource says why."""
    meta = body.get("metadata") or {}
    for label, value in (meta.get("labels") or {}).items():
        kind = _KIND_BY_LABEL.get(label)
        if kind is not None:
            controller().queue.add((kind, meta.get("namespace"), value))


async def on_configmap_event(body: kopf.Body, **_: Any) -> None:
    """A ConfigMap appeared or changed: resources that read their spec text from it go on (SpecNotFound), or
    start a run of the new text."""
    meta = body.get("metadata") or {}
    controller().configmap_changed(str(meta.get("namespace")), str(meta.get("name")))


for _plural in KINDS.values():
    kopf.on.event(GROUP, VERSION, _plural)(on_resource_event)
_managed = {MANAGED_BY_LABEL: MANAGED_BY}
kopf.on.event("kubeflow.org", "v2beta1", "mpijobs", labels=_managed)(on_mpijob_event)
kopf.on.event("", "v1", "pods", labels=_managed)(on_pod_event)
kopf.on.event("", "v1", "configmaps")(on_configmap_event)
