"""Deterministic names, labels and owner references for everything a resource owns.

Names are a pure function of (kind, name, generation), so an operator restart finds what it already
created instead of creating a duplicate, and a new generation gets a new run with a new name. Every
name carries the kind's task (`train`, `prune`, `export`): a ClassificationTrain and a
ClassificationPrune may share a name, their objects may not.
"""

from __future__ import annotations

import hashlib

from kestrel_operator import MANAGED_BY
from kestrel_operator.resources.types import TASKS, ResourceMeta

# The MPI Operator names pods `<mpijob>-worker-<i>` and `<mpijob>-launcher-<5>`; those are also host
# names (DNS labels, <= 63 characters), so an MPIJob name stays well below that.
MAX_MPIJOB_NAME = 45
MAX_NAME = 63
GENERATION_LABEL = "kestrel.dev/generation"
# The run's identity (resources.parse.run_hash): an edit that keeps it (suspend, activeDeadlineSeconds,
# tolerations) updates the run in place instead of starting a new one.
RUN_HASH_LABEL = "kestrel.dev/run-hash"
# The spec's part of it (resources.parse.run_hash): a run whose spec text or upstream cannot be read right now
# (ConfigMap deleted, upstream gone) keeps going while its spec is unchanged.
SPEC_HASH_LABEL = "kestrel.dev/spec-hash"
# Which attempt of its run an MPIJob is (1, 2, ...; spec.retryLimit).
ATTEMPT_LABEL = "kestrel.dev/attempt"
# On the pods of a run that hold ranks in worker pods (`worker`): what the workers' spread (manifests/pods.py) selects.
ROLE_LABEL = "kestrel.dev/role"
WORKER_ROLE = "worker"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def _fit(name: str, suffix: str, limit: int) -> str:
    """`name + suffix`, with `name` shortened and a hash of it appended when it would not fit."""
    base = name.replace(".", "-")
    if not base[:1].isalpha():
        base = "k" + base
    if len(base) + len(suffix) <= limit:
        return base + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-')}-{digest}{suffix}"


def kind_label(meta: ResourceMeta) -> str:
    """`kestrel.dev/classificationtrain`: the label naming the owning resource."""
    return f"kestrel.dev/{meta.kind.lower()}"


def label_value(name: str) -> str:
    return name if len(name) <= MAX_NAME else _fit(name, "", MAX_NAME)


def _task(meta: ResourceMeta) -> str:
    return TASKS[meta.kind]


def mpijob_name(meta: ResourceMeta, generation: int | None = None, attempt: int = 1) -> str:
    """`<name>-<task>-g<generation>`: the run of one generation (default: the resource's current one);
    `-a<attempt>` from its second attempt on."""
    gen = meta.generation if generation is None else generation
    retry = f"-a{attempt}" if attempt > 1 else ""
    return _fit(meta.name, f"-{_task(meta)}-g{gen}{retry}", MAX_MPIJOB_NAME)


def configmap_name(meta: ResourceMeta, generation: int | None = None) -> str:
    gen = meta.generation if generation is None else generation
    return _fit(meta.name, f"-{_task(meta)}-g{gen}-spec", MAX_NAME)


def service_account_name(meta: ResourceMeta) -> str:
    return _fit(meta.name, f"-{_task(meta)}-kestrel", MAX_NAME)


def role_name(meta: ResourceMeta) -> str:
    return _fit(meta.name, f"-{_task(meta)}-kestrel-status", MAX_NAME)


def owner_labels(meta: ResourceMeta) -> dict[str, str]:
    """Labels that select everything any run of this resource created (all generations)."""
    return {MANAGED_BY_LABEL: MANAGED_BY, kind_label(meta): label_value(meta.name)}


def run_labels(meta: ResourceMeta) -> dict[str, str]:
    """Labels of one run (one generation): also set on its pods so `kubectl get pods -l` finds them."""
    return {**owner_labels(meta), "app.kubernetes.io/name": "kestrel", GENERATION_LABEL: str(meta.generation),
            RUN_HASH_LABEL: meta.run_hash, SPEC_HASH_LABEL: meta.spec_hash}


def owner_reference(meta: ResourceMeta) -> dict[str, object]:
    """Controller reference: deleting the resource garbage-collects what it owns."""
    return {
        "apiVersion": meta.api_version,
        "kind": meta.kind,
        "name": meta.name,
        "uid": meta.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(meta: ResourceMeta, name: str, per_run: bool) -> dict[str, object]:
    return {
        "name": name,
        "namespace": meta.namespace,
        "labels": run_labels(meta) if per_run else owner_labels(meta),
        "ownerReferences": [owner_reference(meta)],
    }
