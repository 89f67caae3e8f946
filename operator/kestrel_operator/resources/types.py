"""Typed, validated views of the three custom resources.

The CR dict from the API server (or a YAML file for `render`) is parsed once into these frozen
dataclasses with every default applied, so the builders below never guess about missing keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from kestrel_operator import API_VERSION
from kestrel_operator.resources.defaults import GPU_RESOURCE
from kestrel_operator.settings import DEFAULT_TERMINATION_GRACE_SECONDS

KINDS: Mapping[str, str] = {
    "ClassificationTrain": "classificationtrains",
    "ClassificationPrune": "classificationprunes",
    "ClassificationExport": "classificationexports",
}
SHORT_NAMES: Mapping[str, str] = {
    "ClassificationTrain": "ctrain",
    "ClassificationPrune": "cprune",
    "ClassificationExport": "cexport",
}
# status.phase values (the CRD's enum and status/ use these; status/phase.py maps MPIJob conditions to them).
PENDING, SUSPENDED, RUNNING, SUCCEEDED, FAILED = "Pending", "Suspended", "Running", "Succeeded", "Failed"
PHASES = (PENDING, SUSPENDED, RUNNING, SUCCEEDED, FAILED)
# The `kestrel` subcommand each kind runs, and the spec loader's task for its spec text.
TASKS: Mapping[str, str] = {
    "ClassificationTrain": "train",
    "ClassificationPrune": "prune",
    "ClassificationExport": "export",
}


@dataclass(frozen=True)
class ResourceMeta:
    kind: str
    name: str
    namespace: str
    uid: str
    generation: int
    api_version: str = API_VERSION
    # The run's identity (manifests/runs.py run_identity): the spec hash below with the spec text and the input
    # model's run. parse_resource sets it to `spec_hash`; the reconciler and render replace it by the full
    # identity once the spec text and the upstream model are known. Runs with the same hash are the same run,
    # in the same folder (<results>/runs/<run_hash>).
    run_hash: str = ""
    # Hash of the spec alone (resources.parse.run_hash): what is known before the spec text and the upstream
    # are read.
    spec_hash: str = ""

    @property
    def plural(self) -> str:
        return KINDS[self.kind]


@dataclass(frozen=True)
class VolumeSpec:
    """A PVC (sub-)directory mounted into every pod of the run."""

    claim_name: str
    sub_path: str
    mount_path: str
    read_only: bool = False
    # results only: an init container running as root with CHOWN/FOWNER/DAC_OVERRIDE gives the run's folder (the
    # mounted subPath, not recursively) to the pods' user, for volumes that ignore fsGroup (hostPath, many NFS).
    fix_ownership: bool = False


@dataclass(frozen=True)
class KeyRef:
    """A key in a Secret or ConfigMap of the resource's namespace."""

    name: str
    key: str


@dataclass(frozen=True)
class S3Storage:
    """spec.storage.s3: an S3 (or S3-compatible) store the run's pods reach with the standard AWS environment.
    The credentials stay in the Secret `secret_name` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally
    AWS_SESSION_TOKEN); the pods get them from it by reference (manifests/storage.py)."""

    secret_name: str
    endpoint: Optional[str] = None  # http(s)://host[:port]; None: AWS itself (by region)
    region: Optional[str] = None
    ca_bundle: Optional[KeyRef] = None  # a ConfigMap key holding a PEM bundle for the endpoint


@dataclass(frozen=True)
class ModelRef:
    """Exactly one of: a path in the pods, a ClassificationTrain, a ClassificationPrune."""

    path: Optional[str] = None
    from_train: Optional[str] = None
    from_prune: Optional[str] = None

    @property
    def source_kind(self) -> Optional[str]:
        if self.from_train:
            return "ClassificationTrain"
        if self.from_prune:
            return "ClassificationPrune"
        return None

    @property
    def source_name(self) -> Optional[str]:
        return self.from_train or self.from_prune


@dataclass(frozen=True)
class SchedulingPolicy:
    """The MPIJob's runPolicy.schedulingPolicy: the PodGroup the MPI Operator creates for gang scheduling
    (Volcano or the scheduler-plugins coscheduler, whichever its --gang-scheduling flag names)."""

    min_available: Optional[int] = None
    queue: Optional[str] = None
    priority_class: Optional[str] = None
    schedule_timeout_seconds: Optional[int] = None


@dataclass(frozen=True)
class NetworkSpec:
    """spec.network: the opt-in for NCCL over InfiniBand/RoCE (docs/gpu.md: what it costs in isolation)."""

    host_network: bool = False  # the pods that run ranks share their node's network (hostNetwork)
    ipc_lock: bool = False  # IPC_LOCK added to their capabilities (RDMA pins memory); mpirun stops pinning TCP
    nccl: tuple[tuple[str, str], ...] = ()  # NCCL_* variables for every rank (forwarded by mpirun -x)


@dataclass(frozen=True)
class RunSpec:
    """What every kind shares: where and how its pods run."""

    image: str
    image_pull_policy: Optional[str]
    image_pull_secrets: tuple[str, ...]
    gpus: int
    num_processes: int
    gpus_per_node: int
    key_secret: KeyRef
    experiment_spec: Optional[str]
    experiment_spec_ref: Optional[KeyRef]
    data: Optional[VolumeSpec]
    results: Optional[VolumeSpec]  # None when the results are in object storage (results_url)
    resources: Mapping[str, Mapping[str, str]]
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    priority_class_name: Optional[str]
    service_account_name: Optional[str]
    backoff_limit: int
    active_deadline_seconds: Optional[int]
    shm_size: Optional[str]
    # Queueing, gang scheduling and pod passthrough (see docs/operator.md "Queueing and scheduling").
    suspend: bool = False
    queue_name: Optional[str] = None
    scheduling_policy: Optional[SchedulingPolicy] = None
    scheduler_name: Optional[str] = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()
    affinity: Optional[Mapping[str, Any]] = None
    runtime_class_name: Optional[str] = None
    launcher_resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # Old runs' folders kept besides the promoted one (spec.keepRuns); seconds a finished run's MPIJob and pods
    # stay (spec.ttlSecondsAfterFinished; None: the operator's KESTREL_RUN_TTL_SECONDS).
    keep_runs: int = 3
    # Attempts started again after a failure that is not the trainer's own error (spec.retryLimit).
    retry_limit: int = 3
    # A PodDisruptionBudget over the run's pods while it runs (the operator's KESTREL_DISRUPTION_BUDGET).
    disruption_budget: bool = True
    # terminationGracePeriodSeconds of its pods (the operator's KESTREL_TERMINATION_GRACE_SECONDS): a graceful stop's
    # checkpoint must fit in it.
    termination_grace_seconds: int = DEFAULT_TERMINATION_GRACE_SECONDS
    ttl_seconds_after_finished: Optional[int] = None
    # Seconds the run's pods tolerate a lost node (the operator's KESTREL_NODE_LOST_SECONDS); None: no toleration.
    node_lost_seconds: Optional[int] = None
    # The extended resource the GPUs are requested as (spec.gpuResource, else KESTREL_GPU_RESOURCE): a MIG profile
    # or a renamed/time-sliced resource counts the same as nvidia.com/gpu.
    gpu_resource: str = GPU_RESOURCE
    network: NetworkSpec = field(default_factory=NetworkSpec)
    # spec.storage: the object store the pods reach, and the results location in it (s3://bucket/prefix) that
    # replaces the results volume (exactly one of `results` and `results_url` is set).
    storage: Optional[S3Storage] = None
    results_url: Optional[str] = None

    @property
    def results_root(self) -> str:
        """Where the results go, as the run's pods see it: the results volume's mount path or an s3:// URL."""
        if self.results_url:
            return self.results_url
        assert self.results is not None
        return self.results.mount_path


@dataclass(frozen=True)
class Promotion:
    """spec.promotion: the quality gate a finished run must pass to become the promoted model. `metric` is
    measured by the trainer's evaluation at the end of the run (eval_config's data); `minimum` is an absolute
    floor, `max_drop` how far below the promoted model's value it may be."""

    metric: str  # defaults.PROMOTION_METRICS
    minimum: Optional[float] = None
    max_drop: Optional[float] = None


@dataclass(frozen=True)
class TrainResource:
    meta: ResourceMeta
    run: RunSpec
    use_amp: bool
    init_epoch: Optional[int]
    pretrained_model: Optional[ModelRef]
    promotion: Optional[Promotion] = None


@dataclass(frozen=True)
class PruneResource:
    meta: ResourceMeta
    run: RunSpec
    model: ModelRef
    output_path: str
    normalizer: str
    equalization_criterion: str
    pruning_granularity: int
    pruning_threshold: float
    min_num_filters: int
    excluded_layers: tuple[str, ...]


@dataclass(frozen=True)
class Calibration:
    image_dir: Optional[str] = None
    cache_file: Optional[str] = None
    batches: Optional[int] = None
    batch_size: Optional[int] = None


@dataclass(frozen=True)
class ExportResource:
    meta: ResourceMeta
    run: RunSpec
    model: ModelRef
    output_path: str
    data_type: str
    gen_ds_config: bool
    calibration: Calibration
    max_batch_size: Optional[int]
    engine_file: Optional[str]


Resource = Union[TrainResource, PruneResource, ExportResource]
