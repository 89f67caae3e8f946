"""Flux's health verdict for an object, computed by the kstatus library itself (sigs.k8s.io/cli-utils
v0.37.2 `status.Compute`) through the small Go command gomod/kstatus that e2e/build.sh builds next to the
cluster's binaries. For a custom resource Compute decides, in this order (cli-utils pkg/kstatus/status, generic.go
and status.go): metadata.deletionTimestamp set -> Terminating; status.observedGeneration present and not equal to
metadata.generation -> InProgress; the first condition, in list order, that is Reconciling=True (InProgress, its
message) or Stalled=True (Failed, its message); then a Ready condition: True -> Current, False or Unknown ->
InProgress (never Failed); none of these -> Current. Built-in kinds (Deployment, Pod, Job ...) get their own rules
after the Reconciling/Stalled step instead of the Ready one.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from e2e.components import BUILD_SCRIPT


class KstatusError(RuntimeError):
    """The kstatus binary is missing or failed; the message says why."""


@functools.cache
def kstatus_binary() -> Path:
    """The kstatus binary of this checkout's gomod/kstatus (build.sh names it by a hash of the module, so ask it)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT), "--kstatus"], check=True, capture_output=True, text=True)
    path = Path(out.stdout.strip().splitlines()[-1])
    if not os.access(path, os.X_OK):
        raise KstatusError(f"no kstatus binary at {path}: run `bash e2e/build.sh` (it builds e2e/gomod/kstatus)")
    return path


def kstatus_all(objs: Sequence[dict]) -> list[tuple[str, str]]:
    """(status, message) for each object, in one run of the binary. Status is one of Current, InProgress,
    Failed, Terminating, or Unknown when Compute returns an error (the message is the error)."""
    proc = subprocess.run([str(kstatus_binary())], input=json.dumps(list(objs)), capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        raise KstatusError(f"kstatus exited {proc.returncode}: {proc.stderr.strip()}")
    verdicts = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if len(verdicts) != len(objs):
        raise KstatusError(f"kstatus printed {len(verdicts)} verdicts for {len(objs)} objects: {proc.stdout!r}")
    return [(v["status"], v["message"]) for v in verdicts]


def kstatus(obj: dict) -> tuple[str, str]:
    """(status, message) of kstatus's `status.Compute` for one object as the API server returns it (a dict
    of `kubectl get -o json`), e.g. ("InProgress", "ClassificationTrain generation is 3, but latest observed
    generation is 2")."""
    return kstatus_all([obj])[0]
