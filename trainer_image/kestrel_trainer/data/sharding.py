"""Which images each rank reads per epoch and how they are batched: plain arithmetic, no TensorFlow.

- Rank r of S reads files r, r+S, r+2S, ... of the caller's (sorted) list: per epoch the ranks' images
  are disjoint and their union is exactly the data set. (The original gave every rank the whole set,
  so images were seen S times.)
- Horovod needs every rank to run the same number of steps: every rank runs
  `steps_per_epoch(n_files, batch_size, size)` batches per epoch. Partial last batches are kept
  (training and eval), so no image is dropped; when a rank's shard would come out one batch short
  (its shard is an exact multiple of the batch and another rank has one image more) its last full
  batch is split in two halves. Only with batch_size 1 and uneven shards is that impossible: then
  the short ranks repeat their first image once per epoch.

The pipeline (pipeline.py), the image cache (decoded.py), the bad-image check (check.py), the
ranks' metric weights (train/distributed.py) and `train --dry-run` all take their numbers from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kestrel_trainer.errors import DataError


def steps_per_epoch(n_files: int, batch_size: int, size: int = 1) -> int:
    """Batches every rank runs per epoch: ceil(ceil(n_files / size) / batch_size)."""
    if n_files < size:
        raise DataError(f"{n_files} images cannot be split across {size} ranks (each rank needs at least one)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return math.ceil(math.ceil(n_files / size) / batch_size)


def shard_indices(n_files: int, rank: int, size: int) -> np.ndarray:
    """Indices (into the caller's file list) that rank `rank` of `size` reads: rank, rank+size, ..."""
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    return np.arange(rank, n_files, size, dtype=np.int64)


def shard_size(n_files: int, rank: int, size: int) -> int:
    """How many images rank `rank` of `size` reads per epoch: len(shard_indices(...))."""
    return len(shard_indices(n_files, rank, size))


def batch_plan(shard_size: int, batch_size: int, steps: int) -> list[tuple[int, int, int]]:
    """Segments (start, count, batch) of a rank's epoch order that give exactly `steps` batches.

    Normally one segment batched by batch_size with the partial last batch kept. If that gives one
    batch too few, the last full batch is split into two halves; with batch_size 1 the first
    images are repeated (the only case where an image is seen twice in an epoch).
    """
    m, b = shard_size, batch_size
    natural = math.ceil(m / b)
    if natural == steps:
        return [(0, m, b)]
    if natural > steps:
        raise ValueError(f"shard of {m} images needs {natural} batches of {b}, more than {steps} steps")
    if natural == steps - 1 and b >= 2 and m >= b:
        return [(0, m - b, b), (m - b, b, (b + 1) // 2)]
    return [(0, m, b), (0, (steps - natural) * b, b)]


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch: the files it reads, how many batches it runs and how its order is cut into them."""

    n_files: int  # the whole data set (all ranks)
    shard: np.ndarray  # indices into the file list, shard_indices order
    steps: int  # batches per epoch, the same on every rank
    segments: tuple[tuple[int, int, int], ...]  # batch_plan: (start, count, batch) of the epoch order


def plan_epoch(n_files: int, batch_size: int, rank: int = 0, size: int = 1) -> EpochPlan:
    """The shard, step count and batch segments of rank `rank` of `size` (DataError: fewer files than ranks)."""
    steps = steps_per_epoch(n_files, batch_size, size)
    shard = shard_indices(n_files, rank, size)
    return EpochPlan(n_files, shard, steps, tuple(batch_plan(len(shard), batch_size, steps)))
