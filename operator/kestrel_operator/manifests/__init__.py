"""Pure builders: resource -> names, labels, GPU mapping, ConfigMap, RBAC and the MPIJob."""

from kestrel_operator.manifests.build import RunPlan, plan_run
from kestrel_operator.manifests.gpu_mapping import GpuMapping, map_gpus

__all__ = ["RunPlan", "plan_run", "GpuMapping", "map_gpus"]
