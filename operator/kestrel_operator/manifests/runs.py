"""A run's identity and its folder: one folder per run, named by its run hash.

The identity covers everything that changes what a run's pods compute: the spec (resources.parse.run_hash:
without the fields a run takes in place or that act around runs), the spec text (inline or from its
ConfigMap), the run of the model it reads (the upstream's promoted run, so a new promoted model re-runs its
dependents and a rolled-back one rolls them back too), and which resource it is (two resources never share a
folder). The same identity always maps to the same folder, so a restarted pod or operator resumes there, and
an edited spec starts in a new, empty folder while the old run's files stay as they were.
"""

from __future__ import annotations

import hashlib
from typing import Optional

from kestrel_operator.resources.types import ResourceMeta
from kestrel_trainer.spec.contract import RUN_ID, RUNS_DIR

# The trainer's `kestrel runs remove` deletes only <...>/RUNS_DIR/<RUN_ID> folders (the contract).
HASH_LENGTH = 16


def run_identity(meta: ResourceMeta, spec_text: Optional[str], input_run: str = "") -> str:
    """16 hex characters naming the run (and its folder). `input_run`: the run hash of the upstream model
    (fromTrain/fromPrune), empty for a path reference or no model."""
    parts = (meta.kind, meta.namespace, meta.name, meta.spec_hash, spec_text or "", input_run)
    run_hash = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:HASH_LENGTH]
    assert RUN_ID.fullmatch(run_hash)
    return run_hash


def run_relative_dir(run_hash: str) -> str:
    """The run's folder below the results volume's mount path."""
    return f"{RUNS_DIR}/{run_hash}"


def run_dir(results_root: str, run_hash: str) -> str:
    """The run's folder as its pods see it: <results>/runs/<run hash>, where <results> is the results volume's
    mount path or the s3:// URL of spec.storage.resultsPath (RunSpec.results_root)."""
    return f"{results_root.rstrip('/')}/{run_relative_dir(run_hash)}"


def in_run(results_root: str, run_hash: str, path: str) -> str:
    """An output path the resource names in its results location, re-rooted in the run's folder
    (/results/export/m.onnx -> /results/runs/<hash>/export/m.onnx, s3://b/p/x.tlt -> s3://b/p/runs/<hash>/x.tlt);
    a path elsewhere stays as it is."""
    prefix = results_root.rstrip("/") + "/"
    if not path.startswith(prefix):
        return path
    return f"{run_dir(results_root, run_hash)}/{path[len(prefix):]}"
