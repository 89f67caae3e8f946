"""Who this process is among the data-parallel ranks, and what that changes.

Single-process runs use `Ranks()`; a Horovod launch (mpirun, horovodrun, an MPIJob) fills it from
Horovod. The loop only asks: am I the chief (rank 0 writes outputs), how many ranks scale the LR,
which shard do I read.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_chief(self) -> bool:
        return self.rank == 0
