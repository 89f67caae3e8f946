"""spec.storage -> what the run's pods need to reach the object store (docs/storage.md, "In the cluster").

The trainer reads the standard AWS environment (kestrel_trainer.storage.s3). Every trainer container gets:
- AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN when the Secret has it) by `secretKeyRef` to the
  Secret spec.storage.s3.secretRef names: the values are never in the MPIJob, a ConfigMap, a command line or status;
- AWS_ENDPOINT_URL and AWS_REGION as given, AWS_CA_BUNDLE when a caBundle ConfigMap is mounted;
- KESTREL_CACHE_DIR on an emptyDir: the staged datasets and the results' local mirror live and die with the pod.
Ranks that orted starts over ssh inherit none of the pod's environment, so mpirun forwards these by name
(`-x NAME`, manifests/commands.py): the values travel inside OpenMPI's launch protocol, not on a command line.
"""

from __future__ import annotations

from typing import Any

from kestrel_operator.resources import defaults as d
from kestrel_operator.resources.types import RunSpec
from kestrel_trainer.spec.contract import CACHE_DIR_ENV

CACHE_ENV = CACHE_DIR_ENV
CACHE_VOLUME = "kestrel-cache"
CACHE_MOUNT = "/var/cache/kestrel"
CA_VOLUME = "s3-ca-bundle"
CA_DIR = "/etc/kestrel/s3-ca"
CA_FILE = "ca-bundle.pem"


def storage_env(run: RunSpec) -> list[dict[str, Any]]:
    """The environment of every container that runs the trainer (none without spec.storage)."""
    s3 = run.storage
    if s3 is None:
        return []
    out: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": s3.secret_name, "key": name}}}
        for name in d.S3_SECRET_KEYS
    ]
    out += [{"name": name, "valueFrom": {"secretKeyRef": {"name": s3.secret_name, "key": name, "optional": True}}}
            for name in d.S3_OPTIONAL_SECRET_KEYS]
    if s3.endpoint:
        out.append({"name": "AWS_ENDPOINT_URL", "value": s3.endpoint})
    if s3.region:
        out.append({"name": "AWS_REGION", "value": s3.region})
    if s3.ca_bundle is not None:
        out.append({"name": "AWS_CA_BUNDLE", "value": f"{CA_DIR}/{CA_FILE}"})
    out.append({"name": CACHE_ENV, "value": CACHE_MOUNT})
    return out


def forwarded_names(run: RunSpec) -> tuple[str, ...]:
    """The names mpirun forwards to every rank (`-x NAME`, never `-x NAME=value`)."""
    return tuple(e["name"] for e in storage_env(run))


def storage_volumes(run: RunSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The cache emptyDir and the CA bundle (volumes, mounts), on every pod of the run (workers run ranks too)."""
    s3 = run.storage
    if s3 is None:
        return [], []
    volumes: list[dict[str, Any]] = [{"name": CACHE_VOLUME, "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT}]
    if s3.ca_bundle is not None:
        volumes.append({"name": CA_VOLUME, "configMap": {"name": s3.ca_bundle.name, "items": [
            {"key": s3.ca_bundle.key, "path": CA_FILE}]}})
        mounts.append({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True})
    return volumes, mounts
