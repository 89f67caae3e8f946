"""Decode a rank's training images once and keep their pixels in memory for every epoch.

Why: the original decodes every image in every epoch. When a rank's decoded images fit in a share
of the memory (Fashion-MNIST's 54,000 28x28 training images are 40 MiB), keeping the uint8 pixels
makes each later epoch cost only the crop, resample and preprocessing: 1.5-3.7x more images/s per
epoch at 224x224 than decoding (bench/data_pipeline.py). The pixels are exactly what the per-epoch decoding would give
(same decoder, same channel conversion, large JPEGs at the same reduced scale: data/jpeg_scale.py), so a run with the
cache sees the same images as one without.

The budget is a share of the memory this process may still use: MemAvailable, or the cgroup's limit
minus its usage when that is lower (a Kubernetes pod's limit, not the node's free memory), divided
by the number of ranks that may share the machine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from kestrel_trainer.data.jpeg_scale import JpegScale
from kestrel_trainer.data.sharding import shard_indices
from kestrel_trainer.errors import DataError
from kestrel_trainer.progress import progress

CACHE_MODES = ("auto", "on", "off")  # cli/train_cmd.IMAGE_CACHE_MODES repeats these (no NumPy import for --help)
AUTO_MEMORY_SHARE = 0.25  # of the available memory, split over the ranks


@dataclass(frozen=True)
class DecodedImages:
    """Pixels of n images: image i (shapes[i] = H, W, C) is pixels[offsets[i]:offsets[i + 1]] laid out
    [W, C, H], the layout transforms.resample_crop(transposed=True) reads without a transpose of its own.
    A JPEG may be kept decoded at 1/ratios[i] (the scale data/jpeg_scale.py picks for the training options):
    sizes[i] is the full image's height and width (its geometry), shapes[i] ceil(sizes[i] / ratios[i])."""

    pixels: Any  # tf.Tensor, uint8, flat: held by TensorFlow once, shared by every dataset built on it
    offsets: np.ndarray  # int64 [n + 1]
    shapes: np.ndarray  # int32 [n, 3]
    sizes: np.ndarray  # int32 [n, 2]
    ratios: np.ndarray  # int32 [n]
    jpeg: np.ndarray  # bool [n]

    def check_scale(self, scale: Optional[JpegScale]) -> None:
        """ValueError unless every JPEG is kept at the scale `scale` picks (the per-epoch decoding's)."""
        want = np.where(self.jpeg, scale.ratios(self.sizes[:, 0], self.sizes[:, 1]) if scale else 1, 1)
        if np.any(want != self.ratios):
            i = int(np.flatnonzero(want != self.ratios)[0])
            raise ValueError(f"decoded image {i} ({self.sizes[i, 0]}x{self.sizes[i, 1]} JPEG) is kept at 1/"
                             f"{self.ratios[i]}, the pipeline decodes it at 1/{want[i]}: fill the cache with "
                             "scale=options.jpeg_scale")

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.shape[0])


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


def decode_pass(paths: Sequence[str], channels: Optional[int] = None, keep: Optional[np.ndarray] = None, *,
                max_bytes: Optional[int] = None, n_workers: Optional[int] = None,
                log: Optional[Callable[[str], None]] = None, scale: Optional[JpegScale] = None
                ) -> tuple[list[int], Optional[DecodedImages]]:
    """Decode every file once (parallel tf.data pass): (indices of files that fail, pixels of the kept ones).

    This one pass is both the bad-image check and the cache fill. keep: ascending indices whose pixels
    to return (converted to `channels`), None for none; the pixels are None when none are asked for or
    as soon as they would exceed max_bytes (None: no limit; the check goes on, and the log says why).
    A file "fails" when it cannot be read or decoded or has no pixels.
    scale: keep JPEGs decoded at the scale this rule picks (the training options' jpeg_scale), as the
    per-epoch decoding would; None: full size. Files only checked (not kept) are decoded at full size.
    """
    import tensorflow as tf

    from kestrel_trainer.data import transforms as T

    n = len(paths)
    if not n:
        return [], (_assemble([], [], [], [], []) if keep is not None else None)
    wanted = np.zeros(n, bool)
    if keep is not None and (max_bytes is None or max_bytes > 0):
        wanted[np.asarray(keep, np.int64)] = True
    calls = n_workers if n_workers and n_workers > 0 else tf.data.AUTOTUNE

    def decode_any(raw: tf.Tensor):
        image = tf.io.decode_image(raw, channels=0, expand_animations=False)
        tf.debugging.assert_positive(tf.size(image), message="image has no pixels")
        return image if channels is None else T.to_channels(image, channels), tf.constant(1)

    def header_size(raw: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        return tf.cond(tf.io.is_jpeg(raw), lambda: tf.io.extract_jpeg_shape(raw)[:2], lambda: tf.shape(image)[:2])

    def decode_scaled(raw: tf.Tensor):
        # as the pipeline's per-epoch decoding (pipeline._Stages._decode_jpeg_window): RGB, then converted
        header = tf.io.extract_jpeg_shape(raw)
        ratio = T.jpeg_ratio(header[0], header[1], scale)
        return T.to_channels(T.decode_jpeg_scaled(raw, ratio), channels), ratio

    def decode(index: tf.Tensor, path: tf.Tensor, want: tf.Tensor):
        raw = tf.io.read_file(path)
        if scale is None or channels is None:
            image, ratio = decode_any(raw)
        else:
            image, ratio = tf.cond(want & tf.io.is_jpeg(raw), lambda: decode_scaled(raw), lambda: decode_any(raw))
        if channels is None:
            return index, tf.zeros([0], tf.uint8), tf.shape(image), tf.shape(image)[:2], ratio, False
        pixels = tf.cond(want, lambda: tf.reshape(tf.transpose(image, [1, 2, 0]), [-1]),
                         lambda: tf.zeros([0], tf.uint8))
        return index, pixels, tf.shape(image), header_size(raw, image), ratio, tf.io.is_jpeg(raw)

    ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64), list(paths), wanted))
    ds = ds.map(tf.autograph.experimental.do_not_convert(decode), num_parallel_calls=calls,  # as in pipeline.py
                deterministic=True).ignore_errors()
    seen = np.zeros(n, bool)
    images: list[np.ndarray] = []
    shapes: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    ratios: list[int] = []
    jpeg: list[bool] = []
    total = 0
    rows = progress(ds.prefetch(64).as_numpy_iterator(), total=n, desc="image check", unit="img")
    for index, pixels, shape, size, ratio, is_jpeg in rows:  # one at a time: ragged batches cost more
        seen[index] = True
        if wanted[index]:
            total += pixels.nbytes
            if max_bytes is not None and total > max_bytes:
                if log:
                    log(f"decoded images need more than the cache budget ({max_bytes / 2**20:.0f} MiB): "
                        "decoding them every epoch instead")
                # The files after this one (file order) still need their check, without pixels.
                rest = [paths[i] for i in range(index + 1, n)]
                failed_rest, _ = decode_pass(rest, n_workers=n_workers)
                failed = np.flatnonzero(~seen[:index + 1]).tolist() + [index + 1 + i for i in failed_rest]
                return failed, None
            images.append(pixels)
            shapes.append(shape)
            sizes.append(size)
            ratios.append(int(ratio))
            jpeg.append(bool(is_jpeg))
    failed = np.flatnonzero(~seen).tolist()
    if not wanted.any() or failed and np.any(wanted[failed]):
        return failed, None
    return failed, _assemble(images, shapes, sizes, ratios, jpeg)


def _assemble(images: list[np.ndarray], shapes: list[np.ndarray], sizes: list[np.ndarray], ratios: list[int],
              jpeg: list[bool]) -> DecodedImages:
    import tensorflow as tf

    all_shapes = np.array(shapes, np.int32).reshape(-1, 3)
    offsets = np.zeros(len(all_shapes) + 1, np.int64)
    np.cumsum(np.prod(all_shapes, axis=1, dtype=np.int64), out=offsets[1:])
    flat = np.concatenate(images) if images else np.zeros(0, np.uint8)
    images.clear()  # peak memory: twice the cache, briefly
    return DecodedImages(tf.constant(flat), offsets, all_shapes, np.array(sizes, np.int32).reshape(-1, 2),
                         np.array(ratios, np.int32), np.array(jpeg, bool))


def decode_images(paths: Sequence[str], channels: int, *, max_bytes: Optional[int] = None,
                  n_workers: Optional[int] = None, log: Optional[Callable[[str], None]] = None,
                  scale: Optional[JpegScale] = None) -> Optional[DecodedImages]:
    """Every file's pixels with `channels` channels, or None (logged) when they exceed max_bytes.
    scale: JPEGs decoded at the scale this rule picks (the options' jpeg_scale, which make_dataset checks).

    A file that fails to decode is a DataError naming it (the bad-image check runs first, so this
    means it changed since).
    """
    if max_bytes is not None and max_bytes <= 0:
        return None
    failed, decoded = decode_pass(paths, channels, np.arange(len(paths)), max_bytes=max_bytes, n_workers=n_workers,
                                  log=log, scale=scale)
    if failed:
        raise DataError(f"{paths[failed[0]]}: cannot be decoded (it passed the check before, so it changed since); "
                        "run `kestrel dataset check` on the data set")
    return decoded


def log_cached(decoded: Optional[DecodedImages], log: Callable[[str], None]) -> None:
    if decoded is not None:
        log(f"image cache: {len(decoded)} decoded images ({decoded.nbytes / 2**20:.1f} MiB) kept in memory; "
            "epochs read no image files")


def decode_shard(files: Sequence[str], rank: int, size: int, channels: int, mode: str, *,
                 n_workers: Optional[int] = None, log: Callable[[str], None] = print,
                 scale: Optional[JpegScale] = None) -> Optional[DecodedImages]:
    """decode_images for rank `rank`'s shard (sharding.shard_indices order) within the mode's budget."""
    shard = [files[i] for i in shard_indices(len(files), rank, size)]
    decoded = decode_images(shard, channels, max_bytes=cache_budget(mode, size), n_workers=n_workers, log=log,
                            scale=scale)
    log_cached(decoded, log)
    return decoded
