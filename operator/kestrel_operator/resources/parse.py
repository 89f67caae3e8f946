"""CR dict -> typed resource, with defaults and every single-field and cross-field check.

The API server's CEL rules catch most of these at admission, but `render` works without a server
and older servers may skip CEL, so the same rules are enforced here with field paths in messages.
The spec *text* is checked separately (`spec_text.py`) because it may live in a ConfigMap.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any, Optional

from kestrel_operator import API_VERSION
from kestrel_operator.resources import defaults as d
from kestrel_operator.resources.errors import InvalidSpec
from kestrel_operator.resources.types import (
    KINDS,
    Calibration,
    ExportResource,
    KeyRef,
    ModelRef,
    PruneResource,
    Resource,
    ResourceMeta,
    RunSpec,
    SchedulingPolicy,
    TrainResource,
    VolumeSpec,
)
from kestrel_operator.settings import Settings

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


class _Fields:
    """Typed reads from one mapping, with the dotted path for messages."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise InvalidSpec(f"must be an object, got {type(data).__name__}", path)
        self.data = data
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def sub(self, key: str) -> Optional[_Fields]:
        return _Fields(self.data[key], self.at(key)) if self.has(key) else None

    def string(self, key: str, default: Optional[str] = None, required: bool = False) -> Optional[str]:
        value = self.data.get(key)
        if value is None:
            if required:
                raise InvalidSpec("is required", self.at(key))
            return default
        if not isinstance(value, str):
            raise InvalidSpec(f"must be a string, got {value!r}", self.at(key))
        if required and not value.strip():
            raise InvalidSpec("must not be empty", self.at(key))
        return value

    def integer(self, key: str, default: Optional[int] = None, minimum: int | None = None) -> Optional[int]:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidSpec(f"must be an integer, got {value!r}", self.at(key))
        if minimum is not None and value < minimum:
            raise InvalidSpec(f"must be >= {minimum}, got {value}", self.at(key))
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidSpec(f"must be a number, got {value!r}", self.at(key))
        if not low <= value <= high:
            raise InvalidSpec(f"must be between {low} and {high}, got {value}", self.at(key))
        return float(value)

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidSpec(f"must be true or false, got {value!r}", self.at(key))
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: Optional[str]) -> Optional[str]:
        value = self.string(key, default)
        if value is not None and value not in allowed:
            raise InvalidSpec(f"must be one of {', '.join(allowed)}, got {value!r}", self.at(key))
        return value

    def name(self, key: str, required: bool = False) -> Optional[str]:
        value = self.string(key, required=required)
        if value is not None and (len(value) > 253 or not _DNS_SUBDOMAIN.match(value)):
            raise InvalidSpec(f"{value!r} is not a valid Kubernetes object name", self.at(key))
        return value

    def string_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key) or {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise InvalidSpec("must be a map of strings to strings", self.at(key))
        return dict(value)


def _abs_path(fields: _Fields, key: str, value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    if not value.startswith("/") or posixpath.normpath(value) != value.rstrip("/") or ".." in value.split("/"):
        raise InvalidSpec(f"must be an absolute, normalised path (no '..'), got {value!r}", fields.at(key))
    return value


def _volume(parent: _Fields, key: str, default_mount: str, required: bool, read_only: bool) -> Optional[VolumeSpec]:
    f = parent.sub(key)
    if f is None:
        if required:
            raise InvalidSpec("is required (a PVC: claimName, optional subPath and mountPath)", parent.at(key))
        return None
    claim = f.name("claimName", required=True)
    sub_path = f.string("subPath", "") or ""
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        raise InvalidSpec(f"must be a relative path without '..', got {sub_path!r}", f.at("subPath"))
    mount = _abs_path(f, "mountPath", f.string("mountPath", default_mount))
    assert claim is not None and mount is not None
    if mount == "/":
        raise InvalidSpec("must not be '/'", f.at("mountPath"))
    return VolumeSpec(claim_name=claim, sub_path=sub_path.strip("/"), mount_path=mount.rstrip("/"),
                      read_only=read_only)


def _key_ref(parent: _Fields, key: str, default_key: str) -> Optional[KeyRef]:
    f = parent.sub(key)
    if f is None:
        return None
    name = f.name("name", required=True)
    ref_key = f.string("key", default_key) or default_key
    assert name is not None
    return KeyRef(name=name, key=ref_key)


def _model_ref(parent: _Fields, key: str, required: bool) -> Optional[ModelRef]:
    f = parent.sub(key)
    if f is None:
        if required:
            raise InvalidSpec("is required: one of path, fromTrain, fromPrune", parent.at(key))
        return None
    ref = ModelRef(
        path=_abs_path(f, "path", f.string("path")),
        from_train=f.name("fromTrain"),
        from_prune=f.name("fromPrune"),
    )
    given = [k for k, v in (("path", ref.path), ("fromTrain", ref.from_train), ("fromPrune", ref.from_prune)) if v]
    if len(given) != 1:
        raise InvalidSpec(f"needs exactly one of path, fromTrain, fromPrune (got {', '.join(given) or 'none'})",
                          f.path)
    return ref


def _resources(parent: _Fields, key: str = "resources") -> dict[str, dict[str, str]]:
    f = parent.sub(key)
    if f is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    for section in f.data:
        if section not in ("requests", "limits"):
            raise InvalidSpec(f"unknown key {section!r}: only requests and limits", f.path)
        values = f.data[section] or {}
        if not isinstance(values, Mapping):
            raise InvalidSpec("must be a map of resource name to quantity", f.at(section))
        out[section] = {}
        for name, qty in values.items():
            if name == d.GPU_RESOURCE:
                raise InvalidSpec(f"{d.GPU_RESOURCE} is set by the operator from spec.gpus; remove it here",
                                  f"{f.at(section)}.{name}")
            text = str(qty) if isinstance(qty, (int, float)) and not isinstance(qty, bool) else qty
            if not isinstance(text, str) or not _QUANTITY.match(text):
                raise InvalidSpec(f"{qty!r} is not a Kubernetes quantity", f"{f.at(section)}.{name}")
            out[section][name] = text
    return out


def _tolerations(parent: _Fields) -> tuple[dict[str, Any], ...]:
    value = parent.data.get("tolerations") or []
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise InvalidSpec("must be a list of tolerations", parent.at("tolerations"))
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    for i, tol in enumerate(value):
        unknown = set(tol) - allowed
        if unknown:
            raise InvalidSpec(f"unknown keys {sorted(unknown)}", f"{parent.at('tolerations')}[{i}]")
    return tuple(dict(t) for t in value)


def _labels(spec: _Fields, key: str, values_are_labels: bool) -> dict[str, str]:
    """Extra labels/annotations for the MPIJob and its pods; the operator's own keys are refused."""
    out = spec.string_map(key)
    for k, v in out.items():
        if not _LABEL_KEY.match(k) or len(k) > 316:
            raise InvalidSpec(f"{k!r} is not a valid label/annotation key", spec.at(key))
        if k.startswith(d.RESERVED_LABEL_PREFIXES):
            raise InvalidSpec(f"{k!r} is set by the operator or the MPI Operator; use another key", spec.at(key))
        if values_are_labels and (len(v) > 63 or not _LABEL_VALUE.match(v)):
            raise InvalidSpec(f"{v!r} (for {k}) is not a valid label value", spec.at(key))
    return out


def _env(spec: _Fields) -> tuple[dict[str, Any], ...]:
    """Extra environment for every trainer container (NCCL_*, proxies): {name, value} or {name, valueFrom}."""
    value = spec.data.get("env") or []
    path = spec.at("env")
    if not isinstance(value, list):
        raise InvalidSpec("must be a list of {name, value} or {name, valueFrom}", path)
    seen: set[str] = set()
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"name", "value", "valueFrom"}:
            raise InvalidSpec("must be {name, value} or {name, valueFrom}", where)
        name = item.get("name")
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise InvalidSpec(f"name {name!r} is not a valid environment variable name", where)
        if name.startswith(d.RESERVED_ENV_PREFIX):
            raise InvalidSpec(f"{name}: names starting with {d.RESERVED_ENV_PREFIX} are set by the operator", where)
        if name in seen:
            raise InvalidSpec(f"{name} is given twice", where)
        seen.add(name)
        if ("value" in item) == ("valueFrom" in item):
            raise InvalidSpec(f"{name}: give exactly one of value or valueFrom", where)
        if "value" in item and not isinstance(item["value"], str):
            raise InvalidSpec(f"{name}: value must be a string (quote numbers)", where)
        if "valueFrom" in item and not isinstance(item["valueFrom"], Mapping):
            raise InvalidSpec(f"{name}: valueFrom must be an object", where)
        out.append(dict(item))
    return tuple(out)


def _scheduling_policy(spec: _Fields) -> Optional[SchedulingPolicy]:
    f = spec.sub("schedulingPolicy")
    if f is None:
        return None
    return SchedulingPolicy(
        min_available=f.integer("minAvailable", None, minimum=1),
        queue=f.string("queue"),
        priority_class=f.name("priorityClass"),
        schedule_timeout_seconds=f.integer("scheduleTimeoutSeconds", None, minimum=1),
    )


def _affinity(spec: _Fields) -> Optional[dict[str, Any]]:
    value = spec.data.get("affinity")
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"nodeAffinity", "podAffinity", "podAntiAffinity"}:
        raise InvalidSpec("must be a core/v1 Affinity: nodeAffinity, podAffinity, podAntiAffinity",
                          spec.at("affinity"))
    return dict(value)


def _run_spec(kind: str, spec: _Fields, settings: Settings) -> RunSpec:
    has_text, has_ref = spec.has("experimentSpec"), spec.has("experimentSpecRef")
    if has_text and has_ref:
        raise InvalidSpec("give experimentSpec or experimentSpecRef, not both", spec.path)
    if kind == "ClassificationTrain" and not (has_text or has_ref):
        raise InvalidSpec("one of experimentSpec (inline text) or experimentSpecRef (a ConfigMap key) is required",
                          spec.path)
    key_secret = _key_ref(spec, "keySecretRef", d.DEFAULT_KEY_SECRET_KEY)
    if key_secret is None:
        raise InvalidSpec("is required: the Secret holding the model key ({name, key})", spec.at("keySecretRef"))

    gpus = spec.integer("gpus", d.DEFAULT_GPUS[kind], minimum=0)
    assert gpus is not None
    num_processes = spec.integer("numProcesses", max(gpus, 1), minimum=1)
    assert num_processes is not None
    if kind != "ClassificationTrain" and num_processes != 1:
        raise InvalidSpec(f"{kind} runs a single process; numProcesses must be 1", spec.at("numProcesses"))
    if gpus > 0 and gpus % num_processes != 0:
        raise InvalidSpec(f"gpus ({gpus}) must be a multiple of numProcesses ({num_processes})", spec.path)
    gpus_per_node = spec.integer("gpusPerNode", settings.gpus_per_node, minimum=1)
    assert gpus_per_node is not None

    volumes = spec.sub("volumes") or _Fields({}, spec.at("volumes"))
    backoff = spec.integer("backoffLimit", d.DEFAULT_BACKOFF_LIMIT, minimum=0)
    assert backoff is not None
    pull_secrets = spec.data.get("imagePullSecrets") or []
    if not isinstance(pull_secrets, list) or not all(isinstance(p, Mapping) and p.get("name") for p in pull_secrets):
        raise InvalidSpec("must be a list of {name: <secret>}", spec.at("imagePullSecrets"))
    shm = spec.string("shmSize")
    if shm is not None and not _QUANTITY.match(shm):
        raise InvalidSpec(f"{shm!r} is not a Kubernetes quantity", spec.at("shmSize"))
    results = _volume(volumes, "results", d.DEFAULT_RESULTS_MOUNT, required=True, read_only=False)
    data = _volume(volumes, "data", d.DEFAULT_DATA_MOUNT, required=kind == "ClassificationTrain", read_only=True)
    assert results is not None
    if data is not None and data.mount_path == results.mount_path:
        raise InvalidSpec("data and results need different mountPaths", volumes.path)
    return RunSpec(
        image=spec.string("image") or settings.default_image,
        image_pull_policy=spec.choice("imagePullPolicy", d.IMAGE_PULL_POLICIES, None),
        image_pull_secrets=tuple(str(p["name"]) for p in pull_secrets),
        gpus=gpus,
        num_processes=num_processes,
        gpus_per_node=gpus_per_node,
        key_secret=key_secret,
        experiment_spec=spec.string("experimentSpec"),
        experiment_spec_ref=_key_ref(spec, "experimentSpecRef", d.DEFAULT_SPEC_CONFIGMAP_KEY),
        data=data,
        results=results,
        resources=_resources(spec),
        node_selector=spec.string_map("nodeSelector"),
        tolerations=_tolerations(spec),
        priority_class_name=spec.name("priorityClassName"),
        service_account_name=spec.name("serviceAccountName"),
        backoff_limit=backoff,
        active_deadline_seconds=spec.integer("activeDeadlineSeconds", None, minimum=1),
        shm_size=shm,
        suspend=spec.boolean("suspend"),
        queue_name=_queue_name(spec),
        scheduling_policy=_scheduling_policy(spec),
        scheduler_name=spec.name("schedulerName"),
        labels=_labels(spec, "labels", values_are_labels=True),
        annotations=_labels(spec, "annotations", values_are_labels=False),
        env=_env(spec),
        affinity=_affinity(spec),
        runtime_class_name=spec.name("runtimeClassName"),
        launcher_resources=_resources(spec, "launcherResources"),
    )


def _queue_name(spec: _Fields) -> Optional[str]:
    value = spec.string("queueName")
    if value is not None and (len(value) > 63 or not _LABEL_VALUE.match(value) or not value):
        raise InvalidSpec(f"{value!r} is not a valid LocalQueue name (a label value)", spec.at("queueName"))
    return value


def run_hash(spec: Any) -> str:
    """Identity of a run: the spec without the fields a run takes in place (defaults.IN_PLACE_FIELDS)."""
    kept = {k: v for k, v in (spec or {}).items() if k not in d.IN_PLACE_FIELDS} if isinstance(spec, Mapping) else {}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_meta(body: Mapping[str, Any]) -> ResourceMeta:
    """Kind, name, namespace, uid, generation (and the run hash) without checking the spec."""
    return _meta(body)


def _meta(body: Mapping[str, Any]) -> ResourceMeta:
    kind = body.get("kind")
    if kind not in KINDS:
        raise InvalidSpec(f"kind must be one of {', '.join(KINDS)}, got {kind!r}", "kind")
    if body.get("apiVersion", API_VERSION) != API_VERSION:
        raise InvalidSpec(f"must be {API_VERSION}, got {body.get('apiVersion')!r}", "apiVersion")
    meta = _Fields(body.get("metadata"), "metadata")
    name = meta.name("name", required=True)
    assert name is not None
    generation = meta.integer("generation", 1, minimum=1)
    assert generation is not None
    return ResourceMeta(
        kind=kind,
        name=name,
        namespace=meta.string("namespace") or "default",
        uid=meta.string("uid") or "",
        generation=generation,
        run_hash=run_hash(body.get("spec")),
    )


def _output_path(spec: _Fields, results: VolumeSpec, default_rel: str) -> str:
    path = _abs_path(spec, "outputPath", spec.string("outputPath")) or f"{results.mount_path}/{default_rel}"
    if not path.startswith(results.mount_path + "/"):
        raise InvalidSpec(f"must be under the results volume ({results.mount_path}/...), got {path!r}",
                          spec.at("outputPath"))
    return path


def parse_resource(body: Mapping[str, Any], settings: Settings) -> Resource:
    """Parse and check a ClassificationTrain/Prune/Export object; raise InvalidSpec naming the field."""
    meta = _meta(body)
    spec = _Fields(body.get("spec"), "spec")
    run = _run_spec(meta.kind, spec, settings)
    if meta.kind == "ClassificationTrain":
        return TrainResource(
            meta=meta,
            run=run,
            use_amp=spec.boolean("useAmp"),
            init_epoch=spec.integer("initEpoch", None, minimum=1),
            pretrained_model=_model_ref(spec, "pretrainedModel", required=False),
        )
    model = _model_ref(spec, "model", required=True)
    assert model is not None
    if meta.kind == "ClassificationPrune":
        granularity = spec.integer("pruningGranularity", d.DEFAULT_GRANULARITY, minimum=1)
        min_filters = spec.integer("minNumFilters", d.DEFAULT_MIN_FILTERS, minimum=1)
        excluded = spec.data.get("excludedLayers") or []
        if not isinstance(excluded, list) or not all(isinstance(x, str) and x for x in excluded):
            raise InvalidSpec("must be a list of layer names", spec.at("excludedLayers"))
        assert granularity is not None and min_filters is not None
        return PruneResource(
            meta=meta,
            run=run,
            model=model,
            output_path=_output_path(spec, run.results, f"pruned/{meta.name}.tlt"),
            normalizer=spec.choice("normalizer", d.NORMALIZERS, d.DEFAULT_NORMALIZER) or d.DEFAULT_NORMALIZER,
            equalization_criterion=spec.choice("equalizationCriterion", d.EQUALIZATION_CRITERIA,
                                               d.DEFAULT_EQUALIZATION) or d.DEFAULT_EQUALIZATION,
            pruning_granularity=granularity,
            pruning_threshold=spec.number("pruningThreshold", d.DEFAULT_THRESHOLD, 0.0, 1.0),
            min_num_filters=min_filters,
            excluded_layers=tuple(excluded),
        )
    cal = spec.sub("calibration") or _Fields({}, spec.at("calibration"))
    calibration = Calibration(
        image_dir=_abs_path(cal, "imageDir", cal.string("imageDir")),
        cache_file=_abs_path(cal, "cacheFile", cal.string("cacheFile")),
        batches=cal.integer("batches", None, minimum=1),
        batch_size=cal.integer("batchSize", None, minimum=1),
    )
    data_type = spec.choice("dataType", d.DATA_TYPES, d.DEFAULT_DATA_TYPE) or d.DEFAULT_DATA_TYPE
    if data_type == "int8" and not (calibration.image_dir or calibration.cache_file):
        raise InvalidSpec("int8 needs calibration.imageDir (images to calibrate on) or calibration.cacheFile",
                          spec.at("dataType"))
    return ExportResource(
        meta=meta,
        run=run,
        model=model,
        output_path=_output_path(spec, run.results, f"export/{meta.name}.etlt"),
        data_type=data_type,
        gen_ds_config=spec.boolean("genDsConfig"),
        calibration=calibration,
        max_batch_size=spec.integer("maxBatchSize", None, minimum=1),
        engine_file=_abs_path(spec, "engineFile", spec.string("engineFile")),
    )
