"""Real objects from the e2e runs, kept as fixtures: with KESTREL_E2E_CAPTURE=<folder>, `capture(obj, name)` writes
the object as the API server returned it (less metadata.managedFields) to <folder>/<name>.yaml. The Argo CD health
checks' test fixtures (deploy/argocd/resource_customizations/*/*/testdata) are such files."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

CAPTURE_ENV = "KESTREL_E2E_CAPTURE"


def capture(obj: dict, name: str) -> None:
    folder = os.environ.get(CAPTURE_ENV)
    if not folder:
        return
    obj = copy.deepcopy(obj)
    obj.get("metadata", {}).pop("managedFields", None)
    obj.pop("_elapsed", None)
    Path(folder).mkdir(parents=True, exist_ok=True)
    header = f"# captured from a real object of the e2e suite ({name}); do not edit by hand\n"
    (Path(folder) / f"{name}.yaml").write_text(header + yaml.safe_dump(obj, sort_keys=False, width=120))


def capture_text(text: str, name: str) -> None:
    """Command output worth keeping beside the objects (e.g. `kubectl get` while a run trains)."""
    folder = os.environ.get(CAPTURE_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.txt").write_text(text)
