"""Defaults and allowed values shared by the parser and the CRD schemas (one source for both)."""

from __future__ import annotations

from collections.abc import Mapping

from kestrel_operator.settings import DEFAULT_GPU_RESOURCE

DEFAULT_KEY_SECRET_KEY = "key"
DEFAULT_SPEC_CONFIGMAP_KEY = "spec.txt"
DEFAULT_CA_BUNDLE_KEY = "ca.crt"
DEFAULT_DATA_MOUNT = "/data"
DEFAULT_RESULTS_MOUNT = "/results"
DEFAULT_BACKOFF_LIMIT = 0
# Training wants a GPU; pruning and ONNX export run fine on a CPU.
DEFAULT_GPUS: Mapping[str, int] = {
    "ClassificationTrain": 1,
    "ClassificationPrune": 0,
    "ClassificationExport": 0,
}

NORMALIZERS = ("max", "L2")
EQUALIZATION_CRITERIA = ("union", "intersection", "arithmetic_mean", "geometric_mean")
DEFAULT_NORMALIZER = "max"
DEFAULT_EQUALIZATION = "union"
DEFAULT_GRANULARITY = 8
DEFAULT_THRESHOLD = 0.1
DEFAULT_MIN_FILTERS = 16

DATA_TYPES = ("fp32", "fp16", "int8")
DEFAULT_DATA_TYPE = "fp32"

IMAGE_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
# Requested by the operator from `gpus`; a user setting it in `resources` would double-book GPUs.
GPU_RESOURCE = DEFAULT_GPU_RESOURCE

# Kueue's label on a job naming its LocalQueue (Kueue admits the MPIJob by unsuspending it).
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Label keys the operator and the MPI Operator own (manifests/names.py sets ours); users cannot override them.
RESERVED_LABEL_PREFIXES = ("kestrel.dev/", "app.kubernetes.io/managed-by", "app.kubernetes.io/name",
                           "training.kubeflow.org/")
# Environment names the operator sets itself (the key, who the trainer is: manifests/commands.py).
RESERVED_ENV_PREFIX = "KESTREL_"
# The standard AWS environment the operator sets from spec.storage (manifests/storage.py); spec.env may not set them
# then. The credentials come from the Secret, by reference.
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_SECRET_KEYS = ("AWS_SESSION_TOKEN",)
STORAGE_ENV = (*S3_SECRET_KEYS, *S3_OPTIONAL_SECRET_KEYS, "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
               "AWS_CA_BUNDLE")
# Spec fields a running run takes in place (the MPIJob is patched; pods created later get new tolerations):
# editing only these (and metadata) never restarts a run. Every other spec edit starts a new run.
IN_PLACE_FIELDS = ("suspend", "activeDeadlineSeconds", "tolerations", "ttlSecondsAfterFinished")
# Spec fields about what happens around runs, not inside them: editing them never starts a run either (a new
# gate applies to runs that finish after it; whether a run evaluates at all is part of its identity:
# manifests/runs.py).
RUN_HISTORY_FIELDS = ("keepRuns", "promotion", "retryLimit")
# Attempts the operator starts again after one fails for a reason other than the trainer's own error (spec.retryLimit).
DEFAULT_RETRY_LIMIT = 3
# Old runs whose folders are kept besides the promoted run's (spec.keepRuns).
DEFAULT_KEEP_RUNS = 3
# The gate's metrics: the status.progress field the trainer's end-of-run evaluation writes for each.
PROMOTION_METRICS = ("top1", "topK")
DEFAULT_PROMOTION_METRIC = "top1"

# spec.storage: an s3://bucket[/prefix] URL (bucket names as S3 allows them: 3-63 lowercase letters, digits, dots and
# hyphens) and an http(s)://host[:port] endpoint. The CRD's patterns and parse.py's checks are these.
S3_URL_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$"
S3_ENDPOINT_PATTERN = r"^https?://[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?/?$"
# A path the pods read or write: absolute in the pod's filesystem, or an object store URL (with spec.storage).
PATH_OR_URL_PATTERN = r"^(/|s3://)"
