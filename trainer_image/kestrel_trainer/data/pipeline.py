"""The tf.data input pipeline: files -> (float32 NHWC images, one-hot float32 labels) batches.

Why it looks like this:
- Sharding happens first: rank r of S takes files r, r+S, r+2S, ... of the caller's (sorted) list,
  and shuffles only inside its shard, so per epoch the ranks' images are disjoint and their union is
  exactly the dataset. (The original gave every rank the whole set, so images were seen S times.)
- All randomness is stateless, derived from (random_seed, epoch, file index) or (random_seed, epoch,
  batch index): the same seed gives the same epochs whatever the parallelism, and a resumed run
  (initial_epoch=k) sees exactly the epochs an uninterrupted run would have seen.
- Horovod needs every rank to run the same number of steps: every rank runs
  `steps_per_epoch(n_files, batch_size, size)` batches per epoch. Partial last batches are kept
  (training and eval), so no image is dropped; when a rank's shard would come out one batch short
  (its shard is an exact multiple of the batch and another rank has one image more) its last full
  batch is split in two halves. Only with batch_size 1 and uneven shards is that impossible: then
  the short ranks repeat their first image once per epoch.
- Decoding uses tf.io.decode_image in a parallel map (n_workers, or AUTOTUNE when it is 0); JPEGs
  decode only the window the crop needs. With `decoded` (data/decoded.py: the rank's shard decoded
  once, kept in memory) no epoch decodes at all, and each batch's geometry and resampling matrices
  are planned in one vectorised map before the per-image work. Resize, crop, flip and preprocessing are one
  `resample_crop` (two sparse matrix products computing only the kept pixels); colour augmentation,
  when on, runs between resampling and preprocessing; mixup runs once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np
import tensorflow as tf

from kestrel_trainer.data import transforms as T
from kestrel_trainer.data.decoded import DecodedImages
from kestrel_trainer.errors import DataError
from kestrel_trainer.spec.types import ModelSpec, TrainSpec

N_DRAWS = 7  # uniform draws per image and epoch: crop (3), flip (1), colour (3)


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


def _num_calls(n_workers: int) -> int:
    return n_workers if n_workers and n_workers > 0 else tf.data.AUTOTUNE


def make_dataset(
    files: Sequence[str],
    labels: Sequence[int],
    n_classes: int,
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    *,
    training: bool,
    batch_size: int,
    rank: int = 0,
    size: int = 1,
    seed: Optional[int] = None,
    center_crop: Optional[bool] = None,
    n_workers: Optional[int] = None,
    initial_epoch: int = 0,
    n_epochs: Optional[int] = None,
    with_paths: bool = False,
    decoded: Optional[DecodedImages] = None,
) -> tf.data.Dataset:
    """Batches of (images float32 [B, H, W, C] preprocessed, labels one-hot float32 [B, n_classes]).

    training=True: shard, per-epoch seeded shuffle, random crop (enable_random_crop) or plain resize,
    colour augmentation (enable_color_augmentation, RGB only), horizontal flip (unless
    disable_horizontal_flip), mixup (mixup_alpha > 0). The dataset holds epochs initial_epoch ..
    initial_epoch + n_epochs - 1 back to back (n_epochs defaults to train_spec.n_epochs -
    initial_epoch), each exactly steps_per_epoch(len(files), batch_size, size) batches; pass it to
    `model.fit(ds, epochs=..., initial_epoch=..., steps_per_epoch=...)` or iterate it once.
    training=False: one pass in file order (this rank's shard), center crop when `center_crop`
    (default train_spec.enable_center_crop; pass eval_spec.enable_center_crop for evaluation)
    else plain resize, last partial batch kept.
    seed defaults to train_spec.random_seed; n_workers to train_spec.n_workers (0 -> AUTOTUNE).
    with_paths=True adds a third element: the batch's file paths (tf.string [B]).
    decoded: this rank's shard (shard_indices order) already decoded with input_channels channels
    (data/decoded.decode_shard); the files are then not read again.
    """
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    if model_spec.input_channels not in (1, 3):
        raise ValueError(f"input_channels must be 1 or 3, got {model_spec.input_channels}")
    n_total = len(files)
    steps = steps_per_epoch(n_total, batch_size, size)
    shard = shard_indices(n_total, rank, size)
    plan = batch_plan(len(shard), batch_size, steps)

    seed = train_spec.random_seed if seed is None else seed
    center_crop = train_spec.enable_center_crop if center_crop is None else center_crop
    workers = train_spec.n_workers if n_workers is None else n_workers
    if not training:
        initial_epoch, n_epochs = 0, 1
    elif n_epochs is None:
        n_epochs = max(train_spec.n_epochs - initial_epoch, 1)

    h, w, c = model_spec.input_height, model_spec.input_width, model_spec.input_channels
    if decoded is not None and (len(decoded) != len(shard) or np.any(decoded.shapes[:, 2] != c)):
        raise ValueError(f"decoded holds {len(decoded)} images, not rank {rank}'s shard of {len(shard)} with "
                         f"{c} channels")
    method = model_spec.resize_interpolation_method
    random_crop = training and train_spec.enable_random_crop
    color = training and train_spec.enable_color_augmentation and c == 3
    flip = training and not train_spec.disable_horizontal_flip
    alpha = float(train_spec.mixup_alpha) if training else 0.0
    mode, image_mean = T.torch_mode(train_spec.preprocess_mode, train_spec.torch_std), dict(train_spec.image_mean)
    num_calls = _num_calls(workers)

    shard_paths = tf.constant([files[i] for i in shard], tf.string)
    shard_labels = tf.constant([labels[i] for i in shard], tf.int32)
    shard_ids = tf.constant(shard, tf.int64)
    if decoded is not None:
        pixels = decoded.pixels
        offsets = tf.constant(decoded.offsets)
        shapes = tf.constant(decoded.shapes)
    base_seed = tf.constant([seed, 0], tf.int64)

    folded_mode = None if color else mode  # colour augmentation needs RGB 0..255, so it preprocesses after

    def geometry(height: tf.Tensor, width: tf.Tensor, u: tf.Tensor):
        """(resized_h, resized_w, top, left) for one image or a batch (vectors); u = the image's draws."""
        if random_crop:
            fraction = T.RANDOM_CROP_MIN_FRACTION + (1.0 - T.RANDOM_CROP_MIN_FRACTION) * u[..., 0]
            return T.random_crop_box(height, width, h, w, fraction, u[..., 1], u[..., 2])
        if not training and center_crop:
            return T.center_crop_box(height, width, h, w)
        ones = tf.ones_like(height)
        return h * ones, w * ones, 0 * ones, 0 * ones

    def mirror(u: tf.Tensor) -> Optional[tf.Tensor]:
        return u[..., 3] < 0.5 if flip else None

    def finish_image(image: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
        if color:
            image = T.preprocess(T.adjust_color(image, *T.color_amounts(u[4:7])), mode, image_mean)
        return tf.ensure_shape(image, [h, w, c])

    def load(path: tf.Tensor, label: tf.Tensor, u: tf.Tensor):
        """Read, decode and transform one file (the path without the image cache)."""
        def decode_jpeg_window(raw: tf.Tensor):
            # Decode only the rows/columns the crop needs: JPEG decoding is the most expensive step.
            full = tf.io.extract_jpeg_shape(raw)
            rh, rw, top, left = geometry(full[0], full[1], u)
            y0, hh = T.source_window(full[0], rh, top, h, method)
            x0, ww = T.source_window(full[1], rw, left, w, method)
            # Grey models: decode RGB and convert like every other format (PIL's rounded ITU-R 601 luma, as
            # the original), not libjpeg's own Y channel, which differs by a few levels.
            window = T.to_channels(tf.image.decode_and_crop_jpeg(raw, tf.stack([y0, x0, hh, ww]), channels=3), c)
            return tf.ensure_shape(window, [None, None, c]), y0, x0, full[0], full[1]

        def decode_any(raw: tf.Tensor):
            image = T.to_channels(tf.io.decode_image(raw, channels=0, expand_animations=False), c)
            shape = tf.shape(image)
            return tf.ensure_shape(image, [None, None, c]), tf.constant(0), tf.constant(0), shape[0], shape[1]

        raw = tf.io.read_file(path)
        window, y0, x0, height, width = tf.cond(
            tf.io.is_jpeg(raw), lambda: decode_jpeg_window(raw), lambda: decode_any(raw))
        image = T.resample_crop(window, y0, x0, height, width, *geometry(height, width, u), h, w, method,
                                flip=mirror(u), mode=folded_mode, image_mean=image_mean)
        return finish_image(image, u), tf.one_hot(label, n_classes, dtype=tf.float32), path

    def plan_cached(paths: tf.Tensor, labels: tf.Tensor, positions: tf.Tensor, u: tf.Tensor):
        """A whole batch's geometry and resampling matrices in one set of ops (the image cache knows every
        size in advance): per image, that work is ~150 small ops, as costly as the resampling itself."""
        sizes = tf.gather(shapes, positions)
        height, width = sizes[:, 0], sizes[:, 1]
        zero = tf.zeros_like(height)
        entries = T.resample_entries(height, width, *geometry(height, width, u), zero, zero, height, width, h, w, c,
                                     method, flip=mirror(u), mode=folded_mode, image_mean=image_mean)
        return (paths, labels, positions, u, *entries)

    def load_cached(path: tf.Tensor, label: tf.Tensor, position: tf.Tensor, u: tf.Tensor, *entries: tf.Tensor):
        """One image from the cache (laid out [W, C, H]) with its planned matrices: the heavy ops only."""
        size = shapes[position]
        window = tf.reshape(pixels[offsets[position]:offsets[position + 1]], tf.stack([size[1], c, size[0]]))
        image = T.resample_apply(window, entries, h, w, method, mode=folded_mode, image_mean=image_mean,
                                 transposed=True)
        return finish_image(image, u), tf.one_hot(label, n_classes, dtype=tf.float32), path

    def finish(batch_index: tf.Tensor, epoch: tf.Tensor, images, onehot, paths):
        if alpha > 0:  # mixing after preprocessing is the same as before: the modes are affine
            s = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(base_seed + [0, 1], epoch), batch_index)
            lam = T.mixup_lambda(s, tf.shape(images)[0], alpha)
            images, onehot = T.mixup(images, onehot, lam)
        return (images, onehot, paths) if with_paths else (images, onehot)

    def epoch_dataset(epoch: tf.Tensor) -> tf.data.Dataset:
        if training:
            order = tf.argsort(tf.random.stateless_uniform(
                [len(shard)], seed=tf.random.experimental.stateless_fold_in(base_seed + [0, 2], epoch)))
            # Row i: file i's draws this epoch (crop fraction, top, left, flip, hue, saturation, contrast), by
            # global file index, so they do not depend on the number of ranks and a resumed epoch repeats them.
            table = tf.random.stateless_uniform(
                [n_total, N_DRAWS], seed=tf.random.experimental.stateless_fold_in(base_seed + [0, 3], epoch))
        else:
            order = tf.range(len(shard))
            table = tf.zeros([n_total, N_DRAWS])
        paths = tf.gather(shard_paths, order)
        labs = tf.gather(shard_labels, order)
        draws = tf.gather(table, tf.gather(shard_ids, order))
        positions = tf.cast(order, tf.int64)
        out = None
        for start, count, batch in plan:
            part = tf.data.Dataset.from_tensor_slices((paths[start:start + count], labs[start:start + count],
                                                       positions[start:start + count], draws[start:start + count]))
            if decoded is None:
                part = part.map(lambda p, y, k, u: load(p, y, u), num_parallel_calls=num_calls, deterministic=True)
            else:
                part = part.batch(batch).map(plan_cached, num_parallel_calls=num_calls, deterministic=True)
                part = part.unbatch().map(load_cached, num_parallel_calls=num_calls, deterministic=True)
            part = part.batch(batch)
            out = part if out is None else out.concatenate(part)
        return out.enumerate().map(lambda k, b: finish(k, epoch, *b), num_parallel_calls=num_calls,
                                   deterministic=True)

    epochs = tf.data.Dataset.range(initial_epoch, initial_epoch + n_epochs)
    ds = epochs.flat_map(epoch_dataset)
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps * n_epochs))
    return ds.prefetch(tf.data.AUTOTUNE)
