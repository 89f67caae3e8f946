"""Flags -> a ClassificationTrain, ClassificationPrune or ClassificationExport object, and the check it must pass.

Pure translation: the caller reads the spec file. The check is the admission webhook's own (manifests/check.py:
the fields, the CEL rows, the spec text with the trainer's loader, the GPU mapping), so a bad request is refused
here with the same message the cluster would give, naming the field, and the flag that set it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from kestrel_operator import API_VERSION
from kestrel_operator.manifests.check import check_resource
from kestrel_operator.resources import InvalidSpec
from kestrel_operator.resources.defaults import DEFAULT_KEY_SECRET_KEY
from kestrel_operator.resources.errors import FieldError
from kestrel_operator.resources.spec_text import spec_source
from kestrel_operator.resources.types import KINDS, SHORT_NAMES, TASKS, ResourceMeta
from kestrel_operator.settings import Settings

TRAIN, PRUNE, EXPORT = "ClassificationTrain", "ClassificationPrune", "ClassificationExport"
DEFAULT_KEY_SECRET = "kestrel-key"  # the examples' and docs' Secret name (examples/k8s/secret.yaml)
SPEC_FIELD = "spec.experimentSpec"
# What a user may call a kind: the task (train), the short name (ctrain), the kind, its plural.
KIND_NAMES: Mapping[str, str] = {
    alias.lower(): kind
    for kind in KINDS
    for alias in (TASKS[kind], SHORT_NAMES[kind], kind, KINDS[kind], KINDS[kind].rstrip("s"))
}
# The flag that sets each field, named next to the field in an error.
FLAGS: Mapping[str, str] = {
    "metadata.name": "--name",
    "spec.image": "--image",
    "spec.gpus": "--gpus",
    "spec.numProcesses": "--num-processes",
    "spec.keySecretRef.name": "--key-secret",
    "spec.volumes.data.claimName": "--data-pvc",
    "spec.volumes.data.subPath": "--data-pvc",
    "spec.volumes.results.claimName": "--results-pvc",
    "spec.volumes.results.subPath": "--results-pvc",
    "spec.storage.s3.endpoint": "--s3-endpoint",
    "spec.storage.s3.secretRef.name": "--s3-secret",
    "spec.storage.resultsPath": "--results-path",
    "spec.outputPath": "--output-path",
    "spec.pruningThreshold": "--pruning-threshold",
    "spec.dataType": "--data-type",
    "spec.calibration.imageDir": "--cal-image-dir",
    "spec.env": "--env",
}
_NAME_CHARS = re.compile(r"[^a-z0-9-]+")


def kind_of(word: str) -> str:
    """`train`, `ctrain`, `ClassificationTrain`, `classificationtrains` -> ClassificationTrain."""
    kind = KIND_NAMES.get(word.lower())
    if kind is None:
        raise InvalidSpec(f"unknown kind {word!r}; expected train, prune or export (or ctrain, cprune, cexport)")
    return kind


def name_from_file(path: str) -> str:
    """A resource name from a spec file's name: `specs/Fashion_ResNet18.txt` -> fashion-resnet18."""
    stem = path.replace("\\", "/").rsplit("/", 1)[-1].split(".", 1)[0]
    return _NAME_CHARS.sub("-", stem.lower()).strip("-")[:63].rstrip("-")


@dataclass(frozen=True)
class Submission:
    """What `kubectl kestrel submit` is given: the kind, the spec text (required for training) and the flags.
    A None field is left out of the resource (the CRD's or the operator's default applies)."""

    kind: str
    name: str
    namespace: str
    spec_text: Optional[str] = None
    spec_file: str = ""  # where spec_text came from: error messages name it instead of spec.experimentSpec
    image: Optional[str] = None
    gpus: Optional[int] = None
    num_processes: Optional[int] = None
    key_secret: str = DEFAULT_KEY_SECRET
    data_pvc: Optional[str] = None  # CLAIM or CLAIM/SUB/PATH
    results_pvc: Optional[str] = None
    data_mount: Optional[str] = None
    results_mount: Optional[str] = None
    s3_endpoint: Optional[str] = None
    s3_region: Optional[str] = None
    s3_secret: Optional[str] = None
    results_path: Optional[str] = None  # s3://bucket/prefix
    model_path: Optional[str] = None  # train: pretrainedModel; prune/export: model
    from_train: Optional[str] = None
    from_prune: Optional[str] = None
    output_path: Optional[str] = None
    pruning_threshold: Optional[float] = None
    data_type: Optional[str] = None
    cal_image_dir: Optional[str] = None
    env: Sequence[tuple[str, str]] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)  # merged last, as JSON merge patch (kubectl run)


def _claim(value: str, mount: Optional[str]) -> dict[str, Any]:
    claim, _, sub_path = value.partition("/")
    volume: dict[str, Any] = {"claimName": claim}
    if sub_path:
        volume["subPath"] = sub_path
    if mount:
        volume["mountPath"] = mount
    return volume


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (a null removes the key), as the API server applies one."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def resource(sub: Submission) -> dict[str, Any]:
    """The custom resource `sub` describes (not checked: see `check`)."""
    spec: dict[str, Any] = {}
    if sub.spec_text is not None:
        spec["experimentSpec"] = sub.spec_text
    spec["keySecretRef"] = {"name": sub.key_secret, "key": DEFAULT_KEY_SECRET_KEY}
    for key, value in (("image", sub.image), ("gpus", sub.gpus), ("numProcesses", sub.num_processes)):
        if value is not None:
            spec[key] = value
    volumes: dict[str, Any] = {}
    if sub.data_pvc:
        volumes["data"] = _claim(sub.data_pvc, sub.data_mount)
    if sub.results_pvc:
        volumes["results"] = _claim(sub.results_pvc, sub.results_mount)
    if volumes:
        spec["volumes"] = volumes
    if sub.s3_endpoint or sub.s3_secret or sub.s3_region or sub.results_path:
        s3: dict[str, Any] = {}
        if sub.s3_endpoint:
            s3["endpoint"] = sub.s3_endpoint
        if sub.s3_region:
            s3["region"] = sub.s3_region
        if sub.s3_secret:
            s3["secretRef"] = {"name": sub.s3_secret}
        spec["storage"] = {"s3": s3, **({"resultsPath": sub.results_path} if sub.results_path else {})}
    model = {k: v for k, v in (("path", sub.model_path), ("fromTrain", sub.from_train),
                               ("fromPrune", sub.from_prune)) if v}
    if model:
        spec["pretrainedModel" if sub.kind == TRAIN else "model"] = model
    extra = (("outputPath", sub.output_path), ("pruningThreshold", sub.pruning_threshold),
             ("dataType", sub.data_type))
    spec.update({k: v for k, v in extra if v is not None})
    if sub.cal_image_dir:
        spec["calibration"] = {"imageDir": sub.cal_image_dir}
    if sub.env:
        spec["env"] = [{"name": n, "value": v} for n, v in sub.env]
    body = {"apiVersion": API_VERSION, "kind": sub.kind,
            "metadata": {"name": sub.name, "namespace": sub.namespace}, "spec": spec}
    return merge_patch(body, sub.overrides) if sub.overrides else body


def _with_flag(error: FieldError) -> str:
    flag = FLAGS.get(error.field or "")
    return f"{error} ({flag})" if flag else str(error)


def check(body: Mapping[str, Any], spec_file: str = "", settings: Optional[Settings] = None) -> None:
    """Raise InvalidSpec, one line naming each field (and its flag, and the spec file's line), when the admission
    webhook would refuse `body`. `settings`: the operator's defaults this side knows (gpusPerNode 8 unless set)."""
    spec = body.get("spec") if isinstance(body.get("spec"), Mapping) else {}
    try:
        check_resource(body, settings or Settings(), spec.get("experimentSpec"))
    except InvalidSpec as err:
        line = "; ".join(_with_flag(e) for e in err.errors)
        meta = body.get("metadata") or {}
        if spec_file and body.get("kind") in KINDS:
            source = spec_source(ResourceMeta(kind=str(body["kind"]), name=str(meta.get("name")),
                                              namespace=str(meta.get("namespace") or "default"), uid="",
                                              generation=1), SPEC_FIELD)
            line = line.replace(source, spec_file)
        raise InvalidSpec(line) from None
