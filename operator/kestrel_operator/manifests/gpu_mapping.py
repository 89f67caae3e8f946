"""GPUs -> MPI ranks -> worker pods.

P = numProcesses Horovod ranks; k = gpus / P GPUs per rank (k > 1 is model parallelism and the spec's
model_parallelism must have k entries): whether the numbers fit is the rule the trainer checks too,
`kestrel_trainer.spec.parallelism`; this module packs the ranks into pods. slotsPerWorker S is the
largest divisor of P with S*k <= gpusPerNode, so every pod fits on one node and all pods are equal;
workers = P / S, each requesting S*k GPUs. A single rank runs in the launcher (no worker pods).
CPU only (gpus 0): P ranks, one per worker pod (each with spec.resources' CPU and memory); P = 1 runs in
the launcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from kestrel_operator.resources.errors import InvalidSpec
from kestrel_operator.resources.parse import parallelism_errors
from kestrel_trainer.spec.parallelism import parallelism


@dataclass(frozen=True)
class GpuMapping:
    ranks: int  # P
    gpus_per_rank: int  # k (0 on a CPU-only run)
    slots_per_worker: int  # S
    workers: int  # P / S; 0 when the launcher is the only pod
    gpus_per_pod: int  # S * k: the nvidia.com/gpu request of each pod that runs ranks

    @property
    def launcher_as_worker(self) -> bool:
        return self.workers == 0

    @property
    def total_gpus(self) -> int:
        return self.ranks * self.gpus_per_rank


def map_gpus(
    gpus: int,
    num_processes: int,
    gpus_per_node: int,
    model_parallelism: Optional[Sequence[float]] = None,
    spec_text_field: str = "spec.experimentSpec",
) -> GpuMapping:
    """Check the numbers with the shared rule (InvalidSpec lists every violation), then pack the ranks.
    `model_parallelism` None: the spec text is not known (no fraction check)."""
    rule = parallelism(gpus, num_processes, model_parallelism, gpus_per_node)
    if not rule.ok:
        raise InvalidSpec(parallelism_errors(rule, spec_text_field))
    k = rule.gpus_per_rank
    if gpus == 0:
        workers = 0 if num_processes == 1 else num_processes
        return GpuMapping(ranks=num_processes, gpus_per_rank=0, slots_per_worker=1, workers=workers, gpus_per_pod=0)
    slots = max(s for s in range(1, num_processes + 1) if num_processes % s == 0 and s * k <= gpus_per_node)
    if num_processes == 1:
        return GpuMapping(ranks=1, gpus_per_rank=k, slots_per_worker=1, workers=0, gpus_per_pod=k)
    return GpuMapping(
        ranks=num_processes,
        gpus_per_rank=k,
        slots_per_worker=slots,
        workers=num_processes // slots,
        gpus_per_pod=slots * k,
    )
