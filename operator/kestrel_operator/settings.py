"""Operator settings from environment variables (the Helm chart sets them).

Read once at start-up into an immutable value that is passed down explicitly, so the pure builders
never read the environment themselves and tests pass settings directly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_IMAGE = "kestrel-trainer:0.1.0"
DEFAULT_GPUS_PER_NODE = 8
DEFAULT_RESYNC_SECONDS = 300
DEFAULT_WORKERS = 8


class SettingsError(ValueError):
    """An environment variable the operator cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    default_image: str = DEFAULT_IMAGE
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE
    # Empty: watch every namespace (cluster-wide).
    watch_namespaces: tuple[str, ...] = ()
    log_level: str = "INFO"
    # Every resource is reconciled again this often even without a watch event (a dropped watch, an
    # Event on a pod that did not change the pod).
    resync_seconds: int = DEFAULT_RESYNC_SECONDS
    # Reconcile passes that run at once (threads of the work queue).
    workers: int = DEFAULT_WORKERS


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


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """KESTREL_DEFAULT_IMAGE, KESTREL_GPUS_PER_NODE, KESTREL_WATCH_NAMESPACES (comma list, empty = all),
    KESTREL_LOG_LEVEL, KESTREL_RESYNC_SECONDS, KESTREL_WORKERS."""
    env = os.environ if env is None else env
    level = env.get("KESTREL_LOG_LEVEL", "").strip().upper() or "INFO"
    if not isinstance(logging.getLevelName(level), int):
        raise SettingsError(f"KESTREL_LOG_LEVEL={level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    namespaces = tuple(ns.strip() for ns in env.get("KESTREL_WATCH_NAMESPACES", "").split(",") if ns.strip())
    return Settings(
        default_image=env.get("KESTREL_DEFAULT_IMAGE", "").strip() or DEFAULT_IMAGE,
        gpus_per_node=_int(env, "KESTREL_GPUS_PER_NODE", DEFAULT_GPUS_PER_NODE, 1),
        watch_namespaces=namespaces,
        log_level=level,
        resync_seconds=_int(env, "KESTREL_RESYNC_SECONDS", DEFAULT_RESYNC_SECONDS, 1),
        workers=_int(env, "KESTREL_WORKERS", DEFAULT_WORKERS, 1),
    )
