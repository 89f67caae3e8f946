"""Operator settings from environment variables (the Helm chart sets them).

Read once at start-up into an immutable value that is passed down explicitly, so the pure builders
never read the environment themselves and tests pass settings directly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

DEFAULT_IMAGE = "kestrel-trainer:0.1.0"  # runs with gpus 0 (TensorFlow without CUDA)
# Runs with gpus > 0 (scripts/build_images.sh --gpu builds localhost/kestrel-trainer-gpu:VERSION). Which image a run
# gets cannot be checked here without pulling it: the trainer's start-up check fails a GPU run on an image without
# CUDA with one line in the status (kestrel_trainer.train.devices).
DEFAULT_GPU_IMAGE = "kestrel-trainer-gpu:0.1.0"
# The extended resource a run's GPUs are requested as, when the resource names none (spec.gpuResource): MIG
# (nvidia.com/mig-1g.10gb) and renamed or time-sliced resources (nvidia.com/gpu.shared) are counted the same way.
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPUS_PER_NODE = 8
DEFAULT_RESYNC_SECONDS = 300
DEFAULT_WORKERS = 8
# Seconds a finished run's MPIJob (and its pods) stay before the MPI Operator deletes them; status, files and
# Events keep the result. spec.ttlSecondsAfterFinished overrides it per resource.
DEFAULT_RUN_TTL_SECONDS = 3600
# Requests of each pod that runs ranks when the resource names neither a request nor a limit for them: a pod
# without requests is BestEffort, the first one a node under pressure evicts, and the scheduler packs it blindly.
DEFAULT_RANK_REQUESTS = {"cpu": "2", "memory": "8Gi"}
# /dev/shm (a memory-backed emptyDir: NCCL, tf.data) when the resource sets no spec.shmSize: bounded, since it counts
# against the pod's memory.
DEFAULT_SHM_SIZE = "2Gi"
# Seconds Kubernetes waits between a trainer pod's SIGTERM and its SIGKILL (terminationGracePeriodSeconds): the ranks
# finish their step, agree to stop (about a second of training) and rank 0 writes a checkpoint. Kubernetes' own
# default of 30 s is short for a large model's checkpoint on slow storage, or a stop that comes during validation
# (the ranks stop after it).
DEFAULT_TERMINATION_GRACE_SECONDS = 120
# Seconds a run's pods stay bound to a node that stopped answering (NotReady or unreachable) before the control plane
# evicts them (their tolerations of node.kubernetes.io/unreachable and not-ready); then the operator ends the attempt
# (NodeLost) and starts the next on the nodes left. Kubernetes' own default, 300 s, leaves a gang waiting 5 minutes.
DEFAULT_NODE_LOST_SECONDS = 60
# The webhook's generated certificates: one year, renewed at 2/3 of it (serving/certs.py).
DEFAULT_WEBHOOK_CERT_SECONDS = 365 * 24 * 3600
WEBHOOK_CERT_MODES = ("operator", "external")


class SettingsError(ValueError):
    """An environment variable the operator cannot use; the message names it."""


@dataclass(frozen=True)
class Serving:
    """What the operator process serves besides reconciling (the chart sets all of it): the admission
    webhook, Prometheus metrics, and leader election. 0 / empty turns a part off."""

    namespace: str = ""  # the operator's own namespace (Lease, webhook Secret)
    identity: str = "kestrel-operator"  # this replica's name in the Lease (the pod name)
    leader_lease: str = ""  # Lease name; empty: no leader election (a single replica)
    lease_seconds: int = 15
    webhook_port: int = 0
    webhook_host: str = "0.0.0.0"  # listen address
    webhook_secret: str = ""  # Secret keeping the CA bundle and serving certificate (ca.crt, tls.crt, tls.key)
    webhook_config: str = ""  # ValidatingWebhookConfiguration whose caBundle the operator keeps current
    webhook_hosts: tuple[str, ...] = ()  # DNS names / IPs in the serving certificate
    # operator: the operator generates, rotates and publishes the certificates; external: something else (e.g.
    # cert-manager and its cainjector) writes the Secret and caBundle, the operator only serves what the Secret holds.
    webhook_certs: str = "operator"
    webhook_cert_seconds: int = DEFAULT_WEBHOOK_CERT_SECONDS  # lifetime of the certificates the operator makes
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"


@dataclass(frozen=True)
class Settings:
    default_image: str = DEFAULT_IMAGE
    gpu_image: str = DEFAULT_GPU_IMAGE
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    # Added to the tolerations of every run with gpus > 0 (the chart's trainer.gpuTolerations: GPU node taints).
    gpu_tolerations: tuple[Mapping[str, Any], ...] = ()
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE
    # Empty: watch every namespace (cluster-wide).
    watch_namespaces: tuple[str, ...] = ()
    log_level: str = "INFO"
    # Every resource is reconciled again this often even without a watch event (a dropped watch, an
    # Event on a pod that did not change the pod).
    resync_seconds: int = DEFAULT_RESYNC_SECONDS
    # Reconcile passes that run at once (threads of the work queue).
    workers: int = DEFAULT_WORKERS
    # MPIJob runPolicy.ttlSecondsAfterFinished when the resource does not set one; None: never deleted.
    run_ttl_seconds: Optional[int] = DEFAULT_RUN_TTL_SECONDS
    rank_requests: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_RANK_REQUESTS))
    shm_size: Optional[str] = DEFAULT_SHM_SIZE
    # A PodDisruptionBudget over a running run's pods, so a node drain waits for the run instead of breaking it.
    disruption_budget: bool = True
    # terminationGracePeriodSeconds of every trainer pod: time for the graceful stop's checkpoint.
    termination_grace_seconds: int = DEFAULT_TERMINATION_GRACE_SECONDS
    # Tolerations of a lost node on every pod of a run; None: none added (the cluster's default, 300 s, applies).
    node_lost_seconds: Optional[int] = DEFAULT_NODE_LOST_SECONDS
    serving: Serving = field(default_factory=Serving)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in env.get(name, "").split(",") if x.strip())


def _port(env: Mapping[str, str], name: str) -> int:
    port = _int(env, name, 0, 0)
    if port > 65535:
        raise SettingsError(f"{name}={port} is not a TCP port")
    return port


def serving_from_env(env: Mapping[str, str]) -> Serving:
    """KESTREL_POD_NAMESPACE, KESTREL_POD_NAME (else HOSTNAME), KESTREL_LEADER_LEASE, KESTREL_LEASE_SECONDS,
    KESTREL_WEBHOOK_PORT/_HOST/_SECRET/_CONFIG/_HOSTS/_CERTS/_CERT_SECONDS, KESTREL_METRICS_PORT/_HOST."""
    serving = Serving(
        namespace=env.get("KESTREL_POD_NAMESPACE", "").strip(),
        identity=env.get("KESTREL_POD_NAME", "").strip() or env.get("HOSTNAME", "").strip() or "kestrel-operator",
        leader_lease=env.get("KESTREL_LEADER_LEASE", "").strip(),
        lease_seconds=_int(env, "KESTREL_LEASE_SECONDS", 15, 5),
        webhook_port=_port(env, "KESTREL_WEBHOOK_PORT"),
        webhook_host=env.get("KESTREL_WEBHOOK_HOST", "").strip() or "0.0.0.0",
        webhook_secret=env.get("KESTREL_WEBHOOK_SECRET", "").strip(),
        webhook_config=env.get("KESTREL_WEBHOOK_CONFIG", "").strip(),
        webhook_hosts=_list(env, "KESTREL_WEBHOOK_HOSTS"),
        webhook_certs=env.get("KESTREL_WEBHOOK_CERTS", "").strip().lower() or "operator",
        webhook_cert_seconds=_int(env, "KESTREL_WEBHOOK_CERT_SECONDS", DEFAULT_WEBHOOK_CERT_SECONDS, 60),
        metrics_port=_port(env, "KESTREL_METRICS_PORT"),
        metrics_host=env.get("KESTREL_METRICS_HOST", "").strip() or "0.0.0.0",
    )
    needs_namespace = serving.leader_lease or serving.webhook_secret
    if needs_namespace and not serving.namespace:
        raise SettingsError("KESTREL_POD_NAMESPACE is required with KESTREL_LEADER_LEASE or KESTREL_WEBHOOK_SECRET")
    if serving.webhook_certs not in WEBHOOK_CERT_MODES:
        raise SettingsError(f"KESTREL_WEBHOOK_CERTS={serving.webhook_certs!r} is not one of "
                            f"{', '.join(WEBHOOK_CERT_MODES)}")
    if serving.webhook_port and serving.webhook_certs == "operator" and not serving.webhook_hosts:
        raise SettingsError("KESTREL_WEBHOOK_HOSTS (the names in the serving certificate) is required with "
                            "KESTREL_WEBHOOK_PORT")
    if serving.webhook_port and not serving.webhook_secret:
        raise SettingsError("KESTREL_WEBHOOK_SECRET (where the serving certificate is kept) is required with "
                            "KESTREL_WEBHOOK_PORT")
    return serving


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """KESTREL_DEFAULT_IMAGE (gpus 0), KESTREL_GPU_IMAGE (gpus > 0), KESTREL_GPU_RESOURCE, KESTREL_GPU_TOLERATIONS (a
    JSON list of tolerations), KESTREL_GPUS_PER_NODE, KESTREL_WATCH_NAMESPACES (comma list, empty = all),
    KESTREL_LOG_LEVEL, KESTREL_RESYNC_SECONDS, KESTREL_WORKERS, KESTREL_RUN_TTL_SECONDS ("none": finished runs'
    MPIJobs are never deleted), KESTREL_RANK_CPU_REQUEST / KESTREL_RANK_MEMORY_REQUEST ("none": no default),
    KESTREL_SHM_SIZE ("none": no limit), KESTREL_DISRUPTION_BUDGET (true/false), KESTREL_TERMINATION_GRACE_SECONDS,
    KESTREL_NODE_LOST_SECONDS ("none": the cluster's default toleration), and what `serving_from_env` reads."""
    env = os.environ if env is None else env
    level = env.get("KESTREL_LOG_LEVEL", "").strip().upper() or "INFO"
    if not isinstance(logging.getLevelName(level), int):
        raise SettingsError(f"KESTREL_LOG_LEVEL={level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    namespaces = _list(env, "KESTREL_WATCH_NAMESPACES")
    return Settings(
        default_image=env.get("KESTREL_DEFAULT_IMAGE", "").strip() or DEFAULT_IMAGE,
        gpu_image=env.get("KESTREL_GPU_IMAGE", "").strip() or DEFAULT_GPU_IMAGE,
        gpu_resource=_gpu_resource(env),
        gpu_tolerations=_tolerations(env, "KESTREL_GPU_TOLERATIONS"),
        gpus_per_node=_int(env, "KESTREL_GPUS_PER_NODE", DEFAULT_GPUS_PER_NODE, 1),
        watch_namespaces=namespaces,
        log_level=level,
        resync_seconds=_int(env, "KESTREL_RESYNC_SECONDS", DEFAULT_RESYNC_SECONDS, 1),
        workers=_int(env, "KESTREL_WORKERS", DEFAULT_WORKERS, 1),
        run_ttl_seconds=(None if env.get("KESTREL_RUN_TTL_SECONDS", "").strip().lower() == "none"
                         else _int(env, "KESTREL_RUN_TTL_SECONDS", DEFAULT_RUN_TTL_SECONDS, 0)),
        rank_requests=_rank_requests(env),
        shm_size=_optional(env, "KESTREL_SHM_SIZE", DEFAULT_SHM_SIZE),
        disruption_budget=_bool(env, "KESTREL_DISRUPTION_BUDGET", True),
        termination_grace_seconds=_int(env, "KESTREL_TERMINATION_GRACE_SECONDS", DEFAULT_TERMINATION_GRACE_SECONDS, 1),
        node_lost_seconds=(None if env.get("KESTREL_NODE_LOST_SECONDS", "").strip().lower() == "none"
                           else _int(env, "KESTREL_NODE_LOST_SECONDS", DEFAULT_NODE_LOST_SECONDS, 0)),
        serving=serving_from_env(env),
    )


def _optional(env: Mapping[str, str], name: str, default: Optional[str]) -> Optional[str]:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    return None if raw.lower() == "none" else raw


def _rank_requests(env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for resource, name in (("cpu", "KESTREL_RANK_CPU_REQUEST"), ("memory", "KESTREL_RANK_MEMORY_REQUEST")):
        value = _optional(env, name, DEFAULT_RANK_REQUESTS[resource])
        if value is not None:
            out[resource] = value
    return out


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise SettingsError(f"{name}={raw!r} must be true or false")
    return raw == "true"


# An extended resource name: a domain prefix and a name (kubernetes' IsExtendedResourceName / qualified names).
GPU_RESOURCE_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


def _gpu_resource(env: Mapping[str, str]) -> str:
    import re

    raw = env.get("KESTREL_GPU_RESOURCE", "").strip() or DEFAULT_GPU_RESOURCE
    if not re.match(GPU_RESOURCE_PATTERN, raw) or raw.startswith("kubernetes.io/") or len(raw) > 253:
        raise SettingsError(f"KESTREL_GPU_RESOURCE={raw!r} is not an extended resource name (e.g. nvidia.com/gpu)")
    return raw


TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def _tolerations(env: Mapping[str, str], name: str) -> tuple[Mapping[str, Any], ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except ValueError:
        raise SettingsError(f"{name} is not JSON (a list of tolerations)") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) and t and set(t) <= TOLERATION_KEYS
                                              for t in value):
        raise SettingsError(f"{name} must be a JSON list of tolerations with keys {sorted(TOLERATION_KEYS)}")
    return tuple(value)
