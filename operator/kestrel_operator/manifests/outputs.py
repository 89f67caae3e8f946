"""Where each kind leaves its final artifact, and how a consumer mounts a referenced one.

Every artifact is inside its run's folder (manifests/runs.py): a train's checkpoints under
<results>/runs/<hash>/weights, a prune's or export's outputPath re-rooted there (outputPath /results/x.tlt of
run <hash> is /results/runs/<hash>/x.tlt). A ClassificationPrune with `model: {fromTrain: x}` mounts x's
results volume read-only at MODEL_SOURCE_MOUNT and reads x's promoted model from there; the location comes
from x's status.promoted (in the cluster) or from x's spec (in `render`), through the same function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from kestrel_operator.manifests.runs import in_run as in_run_folder
from kestrel_operator.manifests.runs import run_dir
from kestrel_operator.resources.parse import S3_SCHEME
from kestrel_operator.resources.types import (
    ExportResource,
    ModelRef,
    PruneResource,
    Resource,
    TrainResource,
    VolumeSpec,
)

MODEL_SOURCE_MOUNT = "/kestrel/model-source"


@dataclass(frozen=True)
class OutputLocation:
    claim_name: str  # "" when the artifact is in object storage (`path` is then its s3:// URL)
    sub_path: str
    relative_path: str  # under the volume's sub-path (or the results URL)
    path: str  # absolute, as the producing pods see it, or an s3:// URL
    run_hash: str = ""  # the run that made it

    @property
    def in_object_storage(self) -> bool:
        return self.path.startswith(S3_SCHEME)

    def to_status(self) -> dict[str, str]:
        if self.in_object_storage:
            return {"relativePath": self.relative_path}
        return {"claimName": self.claim_name, "subPath": self.sub_path, "relativePath": self.relative_path}

    @classmethod
    def from_record(cls, record: Optional[Mapping[str, Any]]) -> Optional[OutputLocation]:
        """From a run record of status (status.promoted, an entry of status.runs): outputPath, output, runHash."""
        record = record or {}
        out = record.get("output") or {}
        path = str(record.get("outputPath") or "")
        if not out.get("relativePath") or not path or not (out.get("claimName") or path.startswith(S3_SCHEME)):
            return None
        return cls(out.get("claimName") or "", out.get("subPath") or "", out["relativePath"], path,
                   str(record.get("runHash") or ""))

    @classmethod
    def promoted(cls, status: Mapping[str, Any]) -> Optional[OutputLocation]:
        """The model a resource's dependents read: its promoted run's artifact."""
        return cls.from_record(status.get("promoted"))


@dataclass(frozen=True)
class ModelSource:
    """The model a run reads: its path in the run's pods (or s3:// URL), and the extra read-only volume if any."""

    path: str
    volume: Optional[VolumeSpec] = None


def final_model_relative_path(arch: str, n_epochs: int) -> str:
    """The trainer's last checkpoint: weights/<arch>_<epoch:03d>.tlt (classification_tf1's naming)."""
    return f"weights/{arch}_{n_epochs:03d}.tlt"


def output_location(res: Resource, experiment: Any = None) -> OutputLocation:
    """The final artifact of the run `res.meta.run_hash`; a train needs its resolved ExperimentSpec (arch,
    n_epochs)."""
    root = res.run.results_root
    if isinstance(res, TrainResource):
        if experiment is None:
            raise ValueError("a ClassificationTrain's output depends on its spec text")
        in_run = final_model_relative_path(experiment.model.arch, experiment.train.n_epochs)
        path = f"{run_dir(root, res.meta.run_hash)}/{in_run}"
    else:
        assert isinstance(res, (PruneResource, ExportResource))
        path = in_run_folder(root, res.meta.run_hash, res.output_path)
    rel = path[len(root) + 1:]
    results = res.run.results
    if results is None:  # in object storage: the URL is the whole location
        return OutputLocation("", "", rel, path, res.meta.run_hash)
    return OutputLocation(results.claim_name, results.sub_path, rel, path, res.meta.run_hash)


def model_source(ref: ModelRef, upstream: Optional[OutputLocation]) -> ModelSource:
    """A path reference is used as is; a resource reference mounts the upstream's results volume, or reads its
    s3:// URL (the run then needs spec.storage to reach the store)."""
    if ref.path:
        return ModelSource(path=ref.path)
    if upstream is None:
        raise ValueError(f"{ref.source_kind} {ref.source_name} has no output location yet")
    if upstream.in_object_storage:
        return ModelSource(path=upstream.path)
    volume = VolumeSpec(upstream.claim_name, upstream.sub_path, MODEL_SOURCE_MOUNT, read_only=True)
    return ModelSource(path=f"{MODEL_SOURCE_MOUNT}/{upstream.relative_path}", volume=volume)
