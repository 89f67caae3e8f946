"""CR dict -> typed resource, with defaults and every single-field and cross-field check.

The API server's CEL rules catch most of these at admission, but `render` works without a server
and older servers may skip CEL, so the same rules are enforced here with field paths in messages:
the cross-field ones are the rows of `rules.py`, from which the CRDs' CEL rules are generated, and the
GPU/rank rule is `kestrel_trainer.spec.parallelism` (the trainer checks its flags with it too).
Every problem is collected, not only the first: InvalidSpec lists them all, like the MPI Operator's
validation (`spec.gpus: Invalid value: -1: ...; spec.volumes.data: Required value: ...`).
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
from kestrel_operator.resources import rules as cel
from kestrel_operator.resources.errors import (
    FieldError,
    FieldErrors,
    InvalidSpec,
    invalid,
    required,
    unsupported,
)
from kestrel_operator.resources.types import (
    KINDS,
    Calibration,
    ExportResource,
    KeyRef,
    ModelRef,
    NetworkSpec,
    Promotion,
    PruneResource,
    Resource,
    ResourceMeta,
    RunSpec,
    S3Storage,
    SchedulingPolicy,
    TrainResource,
    VolumeSpec,
)
from kestrel_operator.settings import GPU_RESOURCE_PATTERN, Settings
from kestrel_trainer.spec.parallelism import Parallelism, parallelism

S3_SCHEME = "s3://"  # the trainer's (kestrel_trainer.storage.s3.SCHEME); the operator does not import the client

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GPU_RESOURCE = re.compile(GPU_RESOURCE_PATTERN)
_NCCL_NAME = re.compile(r"^NCCL_[A-Z0-9_]+$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
# Where the parallelism rule's inputs are in a resource (the spec text's field is the caller's).
PARALLELISM_FIELDS = {"gpus": "spec.gpus", "processes": "spec.numProcesses", "gpus_per_node": "spec.gpusPerNode"}


def parallelism_errors(result: Parallelism, spec_text_field: str = "spec.experimentSpec") -> list[FieldError]:
    """The rule's violations as field errors (model_parallelism is in the spec text, named by its field)."""
    paths = {**PARALLELISM_FIELDS, "fractions": spec_text_field}
    out = []
    for v in result.violations:
        if v.field == "fractions":
            out.append(FieldError(paths[v.field], v.message, type=None))
        else:
            out.append(invalid(paths[v.field], v.message, v.value))
    return out


class _Fields:
    """Typed reads from one mapping, with the dotted path for messages. A bad value is recorded in `errs`
    and read as None (or the default), so reading goes on and every problem is reported at once."""

    def __init__(self, data: Any, path: str, errs: FieldErrors) -> None:
        self.errs = errs
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            errs.add(invalid(path, f"must be an object, got {type(data).__name__}", data))
            data = {}
        self.data = data

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def bad(self, key: str, detail: str, value: Any) -> None:
        self.errs.add(invalid(self.at(key), detail, value))

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def sub(self, key: str) -> Optional[_Fields]:
        return _Fields(self.data[key], self.at(key), self.errs) if self.has(key) else None

    def cross_field(self, at: str, kind: str) -> None:
        """The table's rules on this object (rules.py; the same as the CRD's CEL rules at `at`)."""
        for rule in cel.broken(at, kind, self.data):
            self.errs.add(invalid(self.path, rule.message, self.data))

    def string(self, key: str, default: Optional[str] = None, required_: bool = False,
               detail: str = "") -> Optional[str]:
        value = self.data.get(key)
        if value is None:
            if required_:
                self.errs.add(required(self.at(key), detail))
            return default
        if not isinstance(value, str):
            self.bad(key, "must be a string", value)
            return None
        if required_ and not value.strip():
            self.bad(key, "must not be empty", value)
            return None
        return value

    def integer(self, key: str, default: Optional[int] = None, minimum: int | None = None) -> Optional[int]:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(key, "must be an integer", value)
            return None
        if minimum is not None and value < minimum:
            self.bad(key, f"must be >= {minimum}", value)
            return None
        return value

    def number(self, key: str, default: float, low: float, high: float) -> Optional[float]:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.bad(key, "must be a number", value)
            return None
        if not low <= value <= high:
            self.bad(key, f"must be between {low} and {high}", value)
            return None
        return float(value)

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.bad(key, "must be true or false", value)
            return default
        return value

    def choice(self, key: str, allowed: tuple[str, ...], default: Optional[str]) -> Optional[str]:
        value = self.string(key, default)
        if value is not None and value not in allowed:
            self.errs.add(unsupported(self.at(key), value, allowed))
            return None
        return value

    def name(self, key: str, required_: bool = False) -> Optional[str]:
        value = self.string(key, required_=required_)
        if value is not None and (len(value) > 253 or not _DNS_SUBDOMAIN.match(value)):
            self.bad(key, "not a valid Kubernetes object name", value)
            return None
        return value

    def string_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key) or {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            self.bad(key, "must be a map of strings to strings", value)
            return {}
        return dict(value)


def _abs_path(fields: _Fields, key: str, value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    if not value.startswith("/") or posixpath.normpath(value) != value.rstrip("/") or ".." in value.split("/"):
        fields.bad(key, "must be an absolute, normalised path (no '..')", value)
        return None
    return value


def _path_or_url(fields: _Fields, key: str, value: Optional[str], storage: bool) -> Optional[str]:
    """An absolute path in the pods, or (with spec.storage) an s3://bucket/key URL."""
    if value is None or not value.startswith(S3_SCHEME):
        return _abs_path(fields, key, value)
    if not storage:
        fields.bad(key, "an s3:// URL needs spec.storage (the endpoint and the credentials' Secret)", value)
        return None
    return _s3_url(fields, key, value)


def _s3_url(fields: _Fields, key: str, value: Optional[str]) -> Optional[str]:
    if value is None:
        return None
    if not re.match(d.S3_URL_PATTERN, value):
        fields.bad(key, "not an s3://bucket/prefix URL (bucket: 3-63 lowercase letters, digits, '.', '-')", value)
        return None
    if ".." in value[len(S3_SCHEME):].split("/"):
        fields.bad(key, "'..' is not allowed in an object key", value)
        return None
    return value.rstrip("/")


def _storage(spec: _Fields) -> tuple[Optional[S3Storage], Optional[str]]:
    """spec.storage: (the S3 store, the results URL in it or None)."""
    f = spec.sub("storage")
    if f is None:
        return None, None
    s3 = f.sub("s3")
    if s3 is None:
        f.errs.add(required(f.at("s3"), "the store: {endpoint, region, secretRef: {name}, caBundle}"))
        return None, None
    before = len(f.errs)
    endpoint = s3.string("endpoint")
    if endpoint is not None and not re.match(d.S3_ENDPOINT_PATTERN, endpoint):
        s3.bad("endpoint", "not an http(s)://host[:port] URL", endpoint)
    region = s3.string("region")
    secret = s3.sub("secretRef")
    secret_name = secret.name("name", required_=True) if secret is not None else None
    if secret is None:
        s3.errs.add(required(s3.at("secretRef"), "the Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"))
    ca = _key_ref(s3, "caBundle", d.DEFAULT_CA_BUNDLE_KEY)
    results = _s3_url(f, "resultsPath", f.string("resultsPath"))
    if len(f.errs) > before or secret_name is None:
        return None, None
    return S3Storage(secret_name=secret_name, endpoint=endpoint.rstrip("/") if endpoint else None, region=region,
                     ca_bundle=ca), results


def _volume(parent: _Fields, key: str, default_mount: str, read_only: bool) -> Optional[VolumeSpec]:
    f = parent.sub(key)
    if f is None:
        return None
    before = len(f.errs)
    claim = f.name("claimName", required_=True)
    sub_path = f.string("subPath", "") or ""
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        f.bad("subPath", "must be a relative path without '..'", sub_path)
    mount = _abs_path(f, "mountPath", f.string("mountPath", default_mount))
    if mount == "/":
        f.bad("mountPath", "must not be '/'", mount)
    fix_ownership = f.boolean("fixOwnership") if key == "results" else False
    if len(f.errs) > before or claim is None or mount is None:
        return None
    return VolumeSpec(claim_name=claim, sub_path=sub_path.strip("/"), mount_path=mount.rstrip("/"),
                      read_only=read_only, fix_ownership=fix_ownership)


def _key_ref(parent: _Fields, key: str, default_key: str) -> Optional[KeyRef]:
    f = parent.sub(key)
    if f is None:
        return None
    name = f.name("name", required_=True)
    ref_key = f.string("key", default_key) or default_key
    return KeyRef(name=name, key=ref_key) if name is not None else None


def _model_ref(parent: _Fields, key: str, required_: bool, kind: str, storage: bool = False) -> Optional[ModelRef]:
    f = parent.sub(key)
    if f is None:
        if required_:
            parent.errs.add(required(parent.at(key), "one of path, fromTrain, fromPrune"))
        return None
    before = len(f.errs)
    ref = ModelRef(
        path=_path_or_url(f, "path", f.string("path"), storage),
        from_train=f.name("fromTrain"),
        from_prune=f.name("fromPrune"),
    )
    f.cross_field(cel.MODEL_REF, kind)
    return ref if len(f.errs) == before else None


def _resources(parent: _Fields, kind: str, key: str = "resources") -> dict[str, dict[str, str]]:
    f = parent.sub(key)
    if f is None:
        return {}
    f.cross_field(cel.REQUIREMENTS, kind)
    out: dict[str, dict[str, str]] = {}
    for section in f.data:
        if section not in ("requests", "limits"):
            f.errs.add(unsupported(f"{f.path}.{section}", section, ("requests", "limits")))
            continue
        values = f.data[section] or {}
        if not isinstance(values, Mapping):
            f.bad(section, "must be a map of resource name to quantity", values)
            continue
        out[section] = {}
        for name, qty in values.items():
            where = f"{f.at(section)}.{name}"
            text = str(qty) if isinstance(qty, (int, float)) and not isinstance(qty, bool) else qty
            if not isinstance(text, str) or not _QUANTITY.match(text):
                f.errs.add(invalid(where, "not a Kubernetes quantity", qty))
                continue
            out[section][name] = text
    return out


def _with_default_requests(resources: dict[str, dict[str, str]],
                           defaults: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The operator's default request for each resource the user names neither in requests nor in limits (a limit
    alone is the request too, in Kubernetes)."""
    named = {*resources.get("requests", {}), *resources.get("limits", {})}
    missing = {k: v for k, v in defaults.items() if k not in named}
    if not missing:
        return resources
    return {**resources, "requests": {**missing, **resources.get("requests", {})}}


def _tolerations(parent: _Fields) -> tuple[dict[str, Any], ...]:
    value = parent.data.get("tolerations") or []
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        parent.bad("tolerations", "must be a list of tolerations", value)
        return ()
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    for i, tol in enumerate(value):
        unknown = set(tol) - allowed
        if unknown:
            parent.errs.add(invalid(f"{parent.at('tolerations')}[{i}]", f"unknown keys {sorted(unknown)}"))
    return tuple(dict(t) for t in value)


def _with_gpu_tolerations(given: tuple[dict[str, Any], ...],
                          defaults: tuple[Mapping[str, Any], ...]) -> tuple[dict[str, Any], ...]:
    """spec.tolerations, then each of the operator's GPU tolerations whose (key, effect) the user did not give."""
    have = {(t.get("key"), t.get("effect")) for t in given}
    return (*given, *(dict(t) for t in defaults if (t.get("key"), t.get("effect")) not in have))


def _gpu_resource(spec: _Fields, default: str) -> str:
    value = spec.string("gpuResource")
    if value is None:
        return default
    if len(value) > 253 or not _GPU_RESOURCE.match(value) or value.startswith("kubernetes.io/"):
        spec.bad("gpuResource", "not an extended resource name (e.g. nvidia.com/gpu, nvidia.com/mig-1g.10gb)", value)
    for section in ("resources", "launcherResources"):
        given = spec.data.get(section)
        for part in ("requests", "limits"):
            if isinstance(given, Mapping) and isinstance(given.get(part), Mapping) and value in given[part]:
                spec.bad(f"{section}.{part}", f"{value} is set by the operator from spec.gpus", value)
    return value


def _network(spec: _Fields, env: tuple[dict[str, Any], ...]) -> NetworkSpec:
    """spec.network: hostNetwork, ipcLock and NCCL_* variables (not also in spec.env)."""
    net = spec.sub("network")
    if net is None:
        return NetworkSpec()
    if not isinstance(net.data, Mapping):
        spec.bad("network", "must be an object {hostNetwork, ipcLock, nccl}", net.data)
        return NetworkSpec()
    # The CRD's schema checks the types; the names are checked here (admission webhook, render), not by CEL.
    nccl = net.string_map("nccl")
    in_env = {e["name"] for e in env}
    for name in nccl:
        if not _NCCL_NAME.match(name):
            net.bad("nccl", "takes NCCL_* variables only (other variables: spec.env)", name)
        elif name in in_env:
            net.bad("nccl", f"{name} is also in spec.env; give it once", name)
    return NetworkSpec(host_network=net.boolean("hostNetwork"), ipc_lock=net.boolean("ipcLock"),
                       nccl=tuple(sorted(nccl.items())))


def _labels(spec: _Fields, key: str, values_are_labels: bool) -> dict[str, str]:
    """Extra labels/annotations for the MPIJob and its pods; the operator's own keys are refused."""
    out = spec.string_map(key)
    for k, v in out.items():
        if not _LABEL_KEY.match(k) or len(k) > 316:
            spec.bad(key, "not a valid label/annotation key", k)
        elif k.startswith(d.RESERVED_LABEL_PREFIXES):
            spec.bad(key, "set by the operator or the MPI Operator; use another key", k)
        elif values_are_labels and (len(v) > 63 or not _LABEL_VALUE.match(v)):
            spec.bad(key, f"not a valid label value (for {k})", v)
    return out


def _env(spec: _Fields, storage: bool = False) -> tuple[dict[str, Any], ...]:
    """Extra environment for every trainer container (NCCL_*, proxies): {name, value} or {name, valueFrom}."""
    value = spec.data.get("env") or []
    path = spec.at("env")
    if not isinstance(value, list):
        spec.bad("env", "must be a list of {name, value} or {name, valueFrom}", value)
        return ()
    seen: set[str] = set()
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        problem = _env_problem(item, seen)
        if not problem and storage and item["name"] in d.STORAGE_ENV:
            problem = f"{item['name']}: set by the operator from spec.storage"
        if problem:
            spec.errs.add(invalid(where, problem))
            continue
        seen.add(item["name"])
        out.append(dict(item))
    return tuple(out)


def _env_problem(item: Any, seen: set[str]) -> Optional[str]:
    if not isinstance(item, Mapping) or set(item) - {"name", "value", "valueFrom"}:
        return "must be {name, value} or {name, valueFrom}"
    name = item.get("name")
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        return f"name {name!r} is not a valid environment variable name"
    if name.startswith(d.RESERVED_ENV_PREFIX):
        return f"{name}: names starting with {d.RESERVED_ENV_PREFIX} are set by the operator"
    if name in seen:
        return f"{name} is given twice"
    if ("value" in item) == ("valueFrom" in item):
        return f"{name}: give exactly one of value or valueFrom"
    if "value" in item and not isinstance(item["value"], str):
        return f"{name}: value must be a string (quote numbers)"
    if "valueFrom" in item and not isinstance(item["valueFrom"], Mapping):
        return f"{name}: valueFrom must be an object"
    return None


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
        spec.bad("affinity", "must be a core/v1 Affinity: nodeAffinity, podAffinity, podAntiAffinity", value)
        return None
    return dict(value)


def _queue_name(spec: _Fields, labels: Mapping[str, Any]) -> Optional[str]:
    """spec.queueName, or Kueue's own convention for every job kind: the label kueue.x-k8s.io/queue-name on the
    resource's metadata (what GitOps users put there)."""
    value = spec.string("queueName")
    label = labels.get(d.KUEUE_QUEUE_LABEL) if isinstance(labels, Mapping) else None
    if value is not None and label is not None and value != label:
        spec.bad("queueName", f"differs from metadata.labels[{d.KUEUE_QUEUE_LABEL}] ({label!r}): set one", value)
        return None
    value = value if value is not None else (str(label) if label is not None else None)
    if value is not None and (len(value) > 63 or not _LABEL_VALUE.match(value) or not value):
        spec.bad("queueName", "not a valid LocalQueue name (a label value)", value)
        return None
    return value


def _parallelism(kind: str, spec: _Fields, settings: Settings) -> Optional[tuple[int, int, int]]:
    """(gpus, ranks, gpusPerNode), checked against the shared rule (model_parallelism waits for the spec
    text); None when something is wrong."""
    gpus = spec.integer("gpus", d.DEFAULT_GPUS[kind])
    processes = spec.integer("numProcesses")
    per_node = spec.integer("gpusPerNode", settings.gpus_per_node)
    if gpus is None or per_node is None or (processes is None and spec.has("numProcesses")):
        return None
    result = parallelism(gpus, processes, None, per_node, single_process=kind != "ClassificationTrain")
    spec.errs.extend(parallelism_errors(result))
    return (gpus, result.ranks, per_node) if result.ok else None


def _run_spec(kind: str, spec: _Fields, settings: Settings, labels: Mapping[str, Any]) -> Optional[RunSpec]:
    errs = spec.errs
    before = len(errs)
    spec.cross_field(cel.SPEC, kind)  # one spec source; int8 calibrated (export)
    key_secret = _key_ref(spec, "keySecretRef", d.DEFAULT_KEY_SECRET_KEY)
    if not spec.has("keySecretRef"):
        errs.add(required(spec.at("keySecretRef"), "the Secret holding the model key ({name, key})"))
    ranks = _parallelism(kind, spec, settings)

    volumes = spec.sub("volumes") or _Fields({}, spec.at("volumes"), errs)
    pull_secrets = spec.data.get("imagePullSecrets") or []
    if not isinstance(pull_secrets, list) or not all(isinstance(p, Mapping) and p.get("name") for p in pull_secrets):
        spec.bad("imagePullSecrets", "must be a list of {name: <secret>}", pull_secrets)
        pull_secrets = []
    shm = spec.string("shmSize", settings.shm_size)
    if shm is not None and not _QUANTITY.match(shm):
        spec.bad("shmSize", "not a Kubernetes quantity", shm)
    storage, results_url = _storage(spec)
    # Whether each volume is needed is a rule of the table (one results location; data unless storage is set).
    results = _volume(volumes, "results", d.DEFAULT_RESULTS_MOUNT, read_only=False)
    data = _volume(volumes, "data", d.DEFAULT_DATA_MOUNT, read_only=True)
    volumes.cross_field(cel.VOLUMES, kind)
    gpus_asked = ranks[0] if ranks else 0
    env = _env(spec, storage is not None)
    network = _network(spec, env)
    fields = dict(
        # the run's image by its GPUs: a GPU run on the CPU image would fail at start (kestrel_trainer.train.devices)
        image=spec.string("image") or (settings.gpu_image if gpus_asked else settings.default_image),
        gpu_resource=_gpu_resource(spec, settings.gpu_resource),
        network=network,
        image_pull_policy=spec.choice("imagePullPolicy", d.IMAGE_PULL_POLICIES, None),
        image_pull_secrets=tuple(str(p["name"]) for p in pull_secrets),
        experiment_spec=spec.string("experimentSpec"),
        experiment_spec_ref=_key_ref(spec, "experimentSpecRef", d.DEFAULT_SPEC_CONFIGMAP_KEY),
        resources=_with_default_requests(_resources(spec, kind), settings.rank_requests),
        node_selector=spec.string_map("nodeSelector"),
        tolerations=_with_gpu_tolerations(_tolerations(spec), settings.gpu_tolerations if gpus_asked else ()),
        priority_class_name=spec.name("priorityClassName"),
        service_account_name=spec.name("serviceAccountName"),
        backoff_limit=spec.integer("backoffLimit", d.DEFAULT_BACKOFF_LIMIT, minimum=0),
        active_deadline_seconds=spec.integer("activeDeadlineSeconds", None, minimum=1),
        suspend=spec.boolean("suspend"),
        queue_name=_queue_name(spec, labels),
        scheduling_policy=_scheduling_policy(spec),
        scheduler_name=spec.name("schedulerName"),
        labels=_labels(spec, "labels", values_are_labels=True),
        annotations=_labels(spec, "annotations", values_are_labels=False),
        # spec.network.nccl after spec.env: both reach every rank (mpirun -x forwards the names)
        env=(*env, *({"name": k, "value": v} for k, v in network.nccl)),
        affinity=_affinity(spec),
        runtime_class_name=spec.name("runtimeClassName"),
        launcher_resources=_resources(spec, kind, "launcherResources"),
        keep_runs=spec.integer("keepRuns", d.DEFAULT_KEEP_RUNS, minimum=0),
        retry_limit=spec.integer("retryLimit", d.DEFAULT_RETRY_LIMIT, minimum=0),
        disruption_budget=settings.disruption_budget,
        termination_grace_seconds=settings.termination_grace_seconds,
        node_lost_seconds=settings.node_lost_seconds,
        ttl_seconds_after_finished=spec.integer("ttlSecondsAfterFinished", settings.run_ttl_seconds, minimum=0),
    )
    if len(errs) > before or ranks is None or key_secret is None or (results is None and results_url is None):
        return None
    gpus, num_processes, gpus_per_node = ranks
    return RunSpec(gpus=gpus, num_processes=num_processes, gpus_per_node=gpus_per_node, key_secret=key_secret,
                   data=data, results=results, shm_size=shm, storage=storage, results_url=results_url, **fields)


def run_hash(spec: Any) -> str:
    """What of a run the spec alone decides: the spec without the fields a run takes in place
    (defaults.IN_PLACE_FIELDS) or that act around runs (defaults.RUN_HISTORY_FIELDS), but with whether the run
    evaluates its model at the end (a gate needs it, and it changes the run's command)."""
    ignored = (*d.IN_PLACE_FIELDS, *d.RUN_HISTORY_FIELDS)
    kept = {k: v for k, v in (spec or {}).items() if k not in ignored} if isinstance(spec, Mapping) else {}
    if isinstance(spec, Mapping) and spec.get("promotion") is not None:
        kept["evaluates"] = True
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_meta(body: Mapping[str, Any]) -> ResourceMeta:
    """Kind, name, namespace, uid, generation (and the run hash) without checking the spec."""
    errs = FieldErrors()
    meta = _meta(body, errs)
    errs.raise_if_any()
    assert meta is not None
    return meta


def _meta(body: Mapping[str, Any], errs: FieldErrors) -> Optional[ResourceMeta]:
    """None (with the errors recorded) when the name or generation is unusable; raises at once for a kind or
    apiVersion that is not ours (nothing else can be checked then)."""
    kind = body.get("kind")
    if kind not in KINDS:
        raise InvalidSpec(unsupported("kind", kind, KINDS))
    if body.get("apiVersion", API_VERSION) != API_VERSION:
        raise InvalidSpec(unsupported("apiVersion", body.get("apiVersion"), (API_VERSION,)))
    meta = _Fields(body.get("metadata"), "metadata", errs)
    name = meta.name("name", required_=True)
    generation = meta.integer("generation", 1, minimum=1)
    if name is None or generation is None:
        return None
    return ResourceMeta(
        kind=kind,
        name=name,
        namespace=meta.string("namespace") or "default",
        uid=meta.string("uid") or "",
        generation=generation,
        run_hash=run_hash(body.get("spec")),
        spec_hash=run_hash(body.get("spec")),
    )


def _output_path(spec: _Fields, run: Optional[RunSpec], default_rel: str) -> Optional[str]:
    given = _path_or_url(spec, "outputPath", spec.string("outputPath"), run is not None and run.storage is not None)
    if run is None:
        return None
    root = run.results_root
    path = given or f"{root}/{default_rel}"
    if not path.startswith(root + "/"):
        where = "the results location" if run.results_url else "the results volume"
        spec.bad("outputPath", f"must be under {where} ({root}/...)", path)
        return None
    return path


def _promotion(spec: _Fields) -> Optional[Promotion]:
    gate = spec.sub("promotion")
    if gate is None:
        return None
    metric = gate.choice("metric", d.PROMOTION_METRICS, d.DEFAULT_PROMOTION_METRIC)
    minimum = gate.number("minimum", -1.0, 0.0, 1.0) if gate.has("minimum") else None
    max_drop = gate.number("maxDrop", -1.0, 0.0, 1.0) if gate.has("maxDrop") else None
    if metric is None:
        return None
    return Promotion(metric=metric, minimum=minimum, max_drop=max_drop)


def _train(meta: Optional[ResourceMeta], spec: _Fields, run: Optional[RunSpec]) -> Optional[TrainResource]:
    use_amp = spec.boolean("useAmp")
    init_epoch = spec.integer("initEpoch", None, minimum=1)
    pretrained = _model_ref(spec, "pretrainedModel", required_=False, kind=cel.TRAIN, storage=spec.has("storage"))
    promotion = _promotion(spec)
    if meta is None or run is None or spec.errs:
        return None
    return TrainResource(meta=meta, run=run, use_amp=use_amp, init_epoch=init_epoch, pretrained_model=pretrained,
                         promotion=promotion)


def _prune(meta: Optional[ResourceMeta], spec: _Fields, run: Optional[RunSpec],
           model: Optional[ModelRef]) -> Optional[PruneResource]:
    excluded = spec.data.get("excludedLayers") or []
    if not isinstance(excluded, list) or not all(isinstance(x, str) and x for x in excluded):
        spec.bad("excludedLayers", "must be a list of layer names", excluded)
    fields = dict(
        output_path=_output_path(spec, run if meta else None, f"pruned/{meta.name if meta else ''}.tlt"),
        normalizer=spec.choice("normalizer", d.NORMALIZERS, d.DEFAULT_NORMALIZER),
        equalization_criterion=spec.choice("equalizationCriterion", d.EQUALIZATION_CRITERIA, d.DEFAULT_EQUALIZATION),
        pruning_granularity=spec.integer("pruningGranularity", d.DEFAULT_GRANULARITY, minimum=1),
        pruning_threshold=spec.number("pruningThreshold", d.DEFAULT_THRESHOLD, 0.0, 1.0),
        min_num_filters=spec.integer("minNumFilters", d.DEFAULT_MIN_FILTERS, minimum=1),
    )
    if meta is None or run is None or model is None or any(v is None for v in fields.values()) or spec.errs:
        return None
    return PruneResource(meta=meta, run=run, model=model, excluded_layers=tuple(excluded), **fields)


def _export(meta: Optional[ResourceMeta], spec: _Fields, run: Optional[RunSpec],
            model: Optional[ModelRef]) -> Optional[ExportResource]:
    cal = spec.sub("calibration") or _Fields({}, spec.at("calibration"), spec.errs)
    calibration = Calibration(
        image_dir=_path_or_url(cal, "imageDir", cal.string("imageDir"), spec.has("storage")),
        cache_file=_path_or_url(cal, "cacheFile", cal.string("cacheFile"), spec.has("storage")),
        batches=cal.integer("batches", None, minimum=1),
        batch_size=cal.integer("batchSize", None, minimum=1),
    )
    data_type = spec.choice("dataType", d.DATA_TYPES, d.DEFAULT_DATA_TYPE)  # int8's calibration: rules.py
    fields = dict(
        output_path=_output_path(spec, run if meta else None, f"export/{meta.name if meta else ''}.etlt"),
        gen_ds_config=spec.boolean("genDsConfig"),
        max_batch_size=spec.integer("maxBatchSize", None, minimum=1),
        engine_file=_path_or_url(spec, "engineFile", spec.string("engineFile"), spec.has("storage")),
    )
    if meta is None or run is None or model is None or data_type is None or fields["output_path"] is None \
            or spec.errs:
        return None
    return ExportResource(meta=meta, run=run, model=model, data_type=data_type, calibration=calibration, **fields)


def parse_resource(body: Mapping[str, Any], settings: Settings) -> Resource:
    """Parse and check a ClassificationTrain/Prune/Export object; raise InvalidSpec listing every field error."""
    errs = FieldErrors()
    meta = _meta(body, errs)
    spec = _Fields(body.get("spec"), "spec", errs)
    kind = str(body.get("kind"))
    run = _run_spec(kind, spec, settings, (body.get("metadata") or {}).get("labels") or {})
    storage = spec.has("storage")
    res: Optional[Resource]
    if kind == "ClassificationTrain":
        res = _train(meta, spec, run)
    elif kind == "ClassificationPrune":
        res = _prune(meta, spec, run, _model_ref(spec, "model", True, kind, storage))
    else:
        res = _export(meta, spec, run, _model_ref(spec, "model", True, kind, storage))
    errs.raise_if_any()
    assert res is not None, "no error recorded but no resource built"
    return res
