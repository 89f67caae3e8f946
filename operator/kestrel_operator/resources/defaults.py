"""Defaults and allowed values shared by the parser and the CRD schemas (one source for both)."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_KEY_SECRET_KEY = "key"
DEFAULT_SPEC_CONFIGMAP_KEY = "spec.txt"
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
GPU_RESOURCE = "nvidia.com/gpu"
