"""Decode a rank's training images once and keep their pixels in memory for every epoch.

Why: the original decodes every image in every epoch. When a rank's decoded images fit in a share
of the memory (Fashion-MNIST's 60,000 28x28 images are 47 MB), keeping the uint8 pixels makes each
later epoch cost only the crop, resample and preprocessing, about half of the per-image CPU at
224x224 (bench/data_pipeline.py). The pixels are exactly what the per-epoch decoding would give
(same decoder, same channel conversion), so a run with the cache sees the same images as one without.

The budget is a share of the memory this process may still use: MemAvailable, or the cgroup's limit
minus its usage when that is lower (a Kubernetes pod's limit, not the node's free memory), divided
by the number of ranks that may share the machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from kestrel_trainer.errors import DataError

CACHE_MODES = ("auto", "on", "off")
AUTO_MEMORY_SHARE = 0.25  # of the available memory, split over the ranks


@dataclass(frozen=True)
class DecodedImages:
    """Pixels of n images: image i (shapes[i] = H, W, C) is pixels[offsets[i]:offsets[i + 1]] laid out
    [W, C, H], the layout transforms.resample_crop(transposed=True) reads without a transpose of its own."""

    pixels: np.ndarray  # uint8, flat
    offsets: np.ndarray  # int64 [n + 1]
    shapes: np.ndarray  # int32 [n, 3]

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> Optional[int]:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup (v2 or v1) limit."""
    available: Optional[int] = None
    try:
        with open(meminfo, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit, usage = _read_int(os.path.join(cgroup, limit_file)), _read_int(os.path.join(cgroup, usage_file))
        if limit is not None and usage is not None and limit < 2**60:  # v1 says "no limit" with a huge number
            room = max(limit - usage, 0)
            available = room if available is None else min(available, room)
            break
    return available


def cache_budget(mode: str, ranks: int = 1) -> Optional[int]:
    """Bytes one rank may keep: 0 for "off", None (no limit) for "on", a share of free memory for "auto"."""
    if mode not in CACHE_MODES:
        raise ValueError(f"image cache must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    if mode == "off":
        return 0
    if mode == "on":
        return None
    available = available_memory()
    return 0 if available is None else int(available * AUTO_MEMORY_SHARE / max(ranks, 1))


def decode_images(paths: Sequence[str], channels: int, *, max_bytes: Optional[int] = None,
                  n_workers: Optional[int] = None, log: Optional[Callable[[str], None]] = None
                  ) -> Optional[DecodedImages]:
    """Decode every file (parallel tf.data pass, file order) to uint8 with `channels` channels.

    Returns None, after logging why, as soon as the pixels would exceed max_bytes (None: no limit), so
    the caller falls back to decoding each epoch. A file that fails to decode is a DataError naming it
    (the bad-image check runs first, so this means it changed since).
    """
    import tensorflow as tf

    from kestrel_trainer.data.transforms import to_channels

    if max_bytes is not None and max_bytes <= 0:
        return None
    calls = n_workers if n_workers and n_workers > 0 else tf.data.AUTOTUNE

    def decode(path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = to_channels(tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False), channels)
        return tf.transpose(image, [1, 2, 0]), tf.shape(image)

    ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(decode, num_parallel_calls=calls, deterministic=True)
    images: list[np.ndarray] = []
    shapes: list[np.ndarray] = []
    total = 0
    try:  # one element at a time: ragged batching costs more than the decoding here
        for image, shape in ds.prefetch(64).as_numpy_iterator():
            total += image.nbytes
            if max_bytes is not None and total > max_bytes:
                if log:
                    log(f"decoded images need more than the cache budget ({max_bytes / 2**20:.0f} MiB after "
                        f"{len(images)} of {len(paths)} images): decoding them every epoch")
                return None
            images.append(image)
            shapes.append(shape)
    except tf.errors.OpError as err:
        raise DataError(f"an image could not be decoded while caching ({err.message.splitlines()[0]}); "
                        "run `kestrel dataset check` on the data set") from None
    all_shapes = np.array(shapes, np.int32).reshape(-1, 3)
    offsets = np.zeros(len(all_shapes) + 1, np.int64)
    np.cumsum(np.prod(all_shapes, axis=1, dtype=np.int64), out=offsets[1:])
    pixels = np.concatenate([image.reshape(-1) for image in images]) if images else np.zeros(0, np.uint8)
    return DecodedImages(pixels, offsets, all_shapes)


def decode_shard(files: Sequence[str], rank: int, size: int, channels: int, mode: str, *,
                 n_workers: Optional[int] = None, log: Callable[[str], None] = print) -> Optional[DecodedImages]:
    """decode_images for rank `rank`'s shard (pipeline.shard_indices order) within the mode's budget."""
    from kestrel_trainer.data.pipeline import shard_indices

    budget = cache_budget(mode, size)
    if budget == 0:
        return None
    shard = [files[i] for i in shard_indices(len(files), rank, size)]
    decoded = decode_images(shard, channels, max_bytes=budget, n_workers=n_workers, log=log)
    if decoded is not None:
        log(f"image cache: {len(decoded)} decoded images ({decoded.nbytes / 2**20:.1f} MiB) kept in memory")
    return decoded

