"""The tf.data input pipeline: files -> (float32 NHWC images, one-hot float32 labels) batches.

`make_dataset(files, labels, n_classes, PipelineOptions.for_training(...) or .for_evaluation(...))`.
The options are resolved from the spec once; the dataset is four stages, in this order:

1. plan (per epoch): which files this rank reads, how many batches and how they are cut (sharding.py,
   plain arithmetic); the epoch's shuffle and every image's random draws (stateless, from the seed).
2. decode: read and decode a file (tf.io.decode_image in a parallel map; JPEGs decode only the window
   the crop needs, at 1/2, 1/4 or 1/8 scale when the output allows: data/jpeg_scale.py), or, with `decoded`
   (data/decoded.py: the rank's shard decoded once, at the same scales, and kept in memory), slice it from
   the image cache: then no epoch decodes at all.
3. parse: geometry (random crop, center crop or plain resize), flip, colour augmentation (one 3x3 matrix
   per image) and preprocessing in one `resample_crop` (two sparse matrix products computing only the kept
   pixels, then one subtraction and, with colour, one clip); the one-hot label. From the image cache, each
   batch's geometry and resampling matrices are planned in one vectorised map before the per-image work.
4. postprocess (per batch): batching by the plan's segments, mixup, the optional paths, epochs back to
   back with a known cardinality, prefetch.

Why it looks like this:
- Sharding happens first and shuffling only inside a shard (sharding.py says why and how partial
  batches are kept with the same step count on every rank).
- All randomness is stateless, derived from (random_seed, epoch, file index) or (random_seed, epoch,
  batch index): the same seed gives the same epochs whatever the parallelism, and a resumed run
  (initial_epoch=k) sees exactly the epochs an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import tensorflow as tf

from kestrel_trainer.data import transforms as T
from kestrel_trainer.data.decoded import DecodedImages
from kestrel_trainer.data.jpeg_scale import JpegScale
from kestrel_trainer.data.sharding import EpochPlan, plan_epoch
from kestrel_trainer.spec.types import ModelSpec, TrainSpec

N_DRAWS = 7  # uniform draws per image and epoch: crop (3), flip (1), colour (3)


@dataclass(frozen=True)
class PipelineOptions:
    """Everything that shapes the batches, resolved from the spec once by for_training / for_evaluation.

    Change a field with dataclasses.replace (e.g. seed, n_workers, n_epochs, with_paths).
    """

    height: int
    width: int
    channels: int  # 1 or 3
    batch_size: int
    training: bool
    seed: int  # all randomness derives from it (shuffle, crop, flip, colour, mixup)
    resize_method: str  # "bilinear" | "bicubic"
    preprocess_mode: str  # a transforms.preprocess_constants key (transforms.torch_mode)
    image_mean: Mapping[str, float] = field(default_factory=dict)
    random_crop: bool = False  # training only
    center_crop: bool = False  # evaluation only; else a plain resize
    color: bool = False  # colour augmentation: training, RGB only
    flip: bool = False  # random horizontal flip: training only
    mixup_alpha: float = 0.0  # training only
    n_workers: int = 0  # tf.data parallel calls of the per-image maps; 0: AUTOTUNE
    n_epochs: int = 1  # a training dataset holds epochs initial_epoch .. n_epochs - 1 (evaluation: one pass)
    with_paths: bool = False  # a third element: the batch's file paths (tf.string [B])
    reduced_jpeg: bool = True  # decode large JPEGs at 1/2, 1/4 or 1/8 when the output allows (jpeg_scale)

    @property
    def jpeg_scale(self) -> Optional[JpegScale]:
        """The rule that picks each JPEG's decode scale for this geometry (data/jpeg_scale.py), None when off."""
        if not self.reduced_jpeg:
            return None
        if self.random_crop:
            return JpegScale.for_geometry(self.height, self.width,
                                          random_crop_min_fraction=T.RANDOM_CROP_MIN_FRACTION)
        if self.center_crop:
            return JpegScale.for_geometry(self.height, self.width, center_crop_padding=T.CROP_PADDING)
        return JpegScale.for_geometry(self.height, self.width)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"input_channels must be 1 or 3, got {self.channels}")
        if self.color and self.channels != 3:
            raise ValueError("colour augmentation needs 3 channels")
        if not self.training and (self.random_crop or self.color or self.flip or self.mixup_alpha):
            raise ValueError("random crop, colour, flip and mixup are training augmentations")
        if self.training and self.center_crop:
            raise ValueError("center crop is for evaluation; training crops at random or resizes")

    @classmethod
    def for_training(cls, model_spec: ModelSpec, train_spec: TrainSpec, batch_size: int) -> PipelineOptions:
        """train_config's augmentations (random crop, colour on RGB, flip, mixup), seed and epochs."""
        return cls(
            **_image_fields(model_spec, train_spec), batch_size=batch_size, training=True,
            random_crop=train_spec.enable_random_crop,
            color=train_spec.enable_color_augmentation and model_spec.input_channels == 3,
            flip=not train_spec.disable_horizontal_flip, mixup_alpha=float(train_spec.mixup_alpha),
            n_epochs=max(train_spec.n_epochs, 1))

    @classmethod
    def for_evaluation(cls, model_spec: ModelSpec, train_spec: TrainSpec, batch_size: int,
                       center_crop: Optional[bool] = None) -> PipelineOptions:
        """One pass in file order; center crop when `center_crop` (default train_config's
        enable_center_crop; pass eval_config's for evaluation), else a plain resize."""
        crop = train_spec.enable_center_crop if center_crop is None else center_crop
        return cls(**_image_fields(model_spec, train_spec), batch_size=batch_size, training=False,
                   center_crop=bool(crop))


def _image_fields(model_spec: ModelSpec, train_spec: TrainSpec) -> dict:
    """The options training and evaluation share: image size, resampling, preprocessing, seed, workers."""
    return dict(height=model_spec.input_height, width=model_spec.input_width, channels=model_spec.input_channels,
                resize_method=model_spec.resize_interpolation_method,
                preprocess_mode=T.torch_mode(train_spec.preprocess_mode, train_spec.torch_std),
                image_mean=dict(train_spec.image_mean), seed=train_spec.random_seed, n_workers=train_spec.n_workers)


def make_dataset(
    files: Sequence[str],
    labels: Sequence[int],
    n_classes: int,
    options: PipelineOptions,
    *,
    rank: int = 0,
    size: int = 1,
    initial_epoch: int = 0,
    decoded: Optional[DecodedImages] = None,
) -> tf.data.Dataset:
    """Batches of (images float32 [B, H, W, C] preprocessed, labels one-hot float32 [B, n_classes]).

    Rank `rank` of `size` reads its shard (sharding.py). Training: the dataset holds epochs
    initial_epoch .. options.n_epochs - 1 (at least one) back to back, each exactly
    steps_per_epoch(len(files), batch_size, size) batches, reshuffled and re-augmented per epoch; pass
    it to `model.fit(ds, epochs=..., initial_epoch=..., steps_per_epoch=...)` or iterate it once.
    Evaluation: one pass over the shard in file order, last partial batch kept.
    decoded: this rank's shard (shard_indices order) already decoded with `channels` channels
    (data/decoded.decode_shard); the files are then not read again.
    """
    if len(files) != len(labels):
        raise ValueError(f"{len(files)} files but {len(labels)} labels")
    plan = plan_epoch(len(files), options.batch_size, rank, size)
    if decoded is not None and (len(decoded) != len(plan.shard) or np.any(decoded.shapes[:, 2] != options.channels)):
        raise ValueError(f"decoded holds {len(decoded)} images, not rank {rank}'s shard of {len(plan.shard)} with "
                         f"{options.channels} channels")
    if decoded is not None:
        decoded.check_scale(options.jpeg_scale)  # the cache holds what decoding every epoch would decode
    first, count = (initial_epoch, max(options.n_epochs - initial_epoch, 1)) if options.training else (0, 1)
    stages = _Stages(options, n_classes, plan, files, labels, decoded)
    # No AutoGraph: the stages branch on Python values only (options, the plan), so converting them gains nothing
    # and cost ~4 CPU-s of each run's start (a tensor in a Python `if` fails when traced); the maps built inside
    # an unconverted function are not converted either.
    ds = tf.data.Dataset.range(first, first + count).flat_map(tf.autograph.experimental.do_not_convert(stages.epoch))
    ds = ds.apply(tf.data.experimental.assert_cardinality(plan.steps * count))
    return ds.prefetch(tf.data.AUTOTUNE)


def _num_calls(n_workers: int) -> int:
    return n_workers if n_workers and n_workers > 0 else tf.data.AUTOTUNE


class _Stages:
    """The stages of one dataset (plan, decode, parse, postprocess) and the tensors they share."""

    def __init__(self, options: PipelineOptions, n_classes: int, plan: EpochPlan, files: Sequence[str],
                 labels: Sequence[int], decoded: Optional[DecodedImages]) -> None:
        self.o = options
        self.n_classes = n_classes
        self.plan = plan
        self.num_calls = _num_calls(options.n_workers)
        self.base_seed = tf.constant([options.seed, 0], tf.int64)
        self.shard_paths = tf.constant([files[i] for i in plan.shard], tf.string)
        self.shard_labels = tf.constant([labels[i] for i in plan.shard], tf.int32)
        self.shard_ids = tf.constant(plan.shard, tf.int64)
        self.decoded = decoded
        self.jpeg_scale = options.jpeg_scale
        if decoded is not None:
            self.pixels = decoded.pixels
            self.offsets = tf.constant(decoded.offsets)
            self.shapes = tf.constant(decoded.shapes)
            self.sizes = tf.constant(decoded.sizes)
            self.ratios = tf.constant(decoded.ratios)

    # -- 1. plan -------------------------------------------------------------------------------------------

    def epoch_examples(self, epoch: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """(paths, labels, shard positions, draws) of this rank's shard in the epoch's order."""
        n_shard = len(self.plan.shard)
        if self.o.training:
            order = tf.argsort(tf.random.stateless_uniform(
                [n_shard], seed=tf.random.experimental.stateless_fold_in(self.base_seed + [0, 2], epoch)))
            # Row i: file i's draws this epoch (crop fraction, top, left, flip, hue, saturation, contrast), by
            # global file index, so they do not depend on the number of ranks and a resumed epoch repeats them.
            table = tf.random.stateless_uniform(
                [self.plan.n_files, N_DRAWS],
                seed=tf.random.experimental.stateless_fold_in(self.base_seed + [0, 3], epoch))
        else:
            order = tf.range(n_shard)
            table = tf.zeros([self.plan.n_files, N_DRAWS])
        paths = tf.gather(self.shard_paths, order)
        labels = tf.gather(self.shard_labels, order)
        draws = tf.gather(table, tf.gather(self.shard_ids, order))
        return paths, labels, tf.cast(order, tf.int64), draws

    def geometry(self, height: tf.Tensor, width: tf.Tensor, u: tf.Tensor):
        """(resized_h, resized_w, top, left) for one image or a batch (vectors); u = the image's draws."""
        h, w = self.o.height, self.o.width
        if self.o.random_crop:
            fraction = T.RANDOM_CROP_MIN_FRACTION + (1.0 - T.RANDOM_CROP_MIN_FRACTION) * u[..., 0]
            return T.random_crop_box(height, width, h, w, fraction, u[..., 1], u[..., 2])
        if self.o.center_crop:
            return T.center_crop_box(height, width, h, w)
        ones = tf.ones_like(height)
        return h * ones, w * ones, 0 * ones, 0 * ones

    def mirror(self, u: tf.Tensor) -> Optional[tf.Tensor]:
        return u[..., 3] < 0.5 if self.o.flip else None

    def color(self, u: tf.Tensor) -> Optional[tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
        return T.color_amounts(u[..., 4:7]) if self.o.color else None

    # -- 2. decode -----------------------------------------------------------------------------------------

    def decode_file(self, path: tf.Tensor, u: tf.Tensor):
        """(window, y0, x0, height, width, ratio): the decoded pixels the crop needs, where they sit in the image
        (the full image's height x width, decoded at 1/ratio: y0, x0 count the reduced image's pixels)."""
        raw = tf.io.read_file(path)
        return tf.cond(tf.io.is_jpeg(raw), lambda: self._decode_jpeg_window(raw, u), lambda: self._decode_any(raw))

    def _decode_jpeg_window(self, raw: tf.Tensor, u: tf.Tensor):
        # Decode only the rows/columns the crop needs, at the smallest scale the output allows (jpeg_scale):
        # JPEG decoding is the most expensive step. The geometry is the full image's (the header's size).
        o, c = self.o, self.o.channels
        full = tf.io.extract_jpeg_shape(raw)
        rh, rw, top, left = self.geometry(full[0], full[1], u)
        ratio = T.jpeg_ratio(full[0], full[1], self.jpeg_scale)
        y0, hh = T.source_window(full[0], rh, top, o.height, o.resize_method, ratio)
        x0, ww = T.source_window(full[1], rw, left, o.width, o.resize_method, ratio)
        # Grey models: decode RGB and convert like every other format (PIL's rounded ITU-R 601 luma, as
        # the original), not libjpeg's own Y channel, which differs by a few levels.
        window = T.to_channels(T.decode_jpeg_scaled(raw, ratio, tf.stack([y0, x0, hh, ww])), c)
        return tf.ensure_shape(window, [None, None, c]), y0, x0, full[0], full[1], ratio

    def _decode_any(self, raw: tf.Tensor):
        c = self.o.channels
        image = T.to_channels(tf.io.decode_image(raw, channels=0, expand_animations=False), c)
        shape = tf.shape(image)
        return (tf.ensure_shape(image, [None, None, c]), tf.constant(0), tf.constant(0), shape[0], shape[1],
                tf.constant(1))

    def cached_window(self, position: tf.Tensor) -> tf.Tensor:
        """Image `position` of the shard from the image cache, laid out [W, C, H]."""
        size = self.shapes[position]
        return tf.reshape(self.pixels[self.offsets[position]:self.offsets[position + 1]],
                          tf.stack([size[1], self.o.channels, size[0]]))

    # -- 3. parse ------------------------------------------------------------------------------------------

    def parse_file(self, path: tf.Tensor, label: tf.Tensor, u: tf.Tensor):
        """Read, decode and transform one file (the path without the image cache)."""
        o = self.o
        window, y0, x0, height, width, ratio = self.decode_file(path, u)
        image = T.resample_crop(window, y0, x0, height, width, *self.geometry(height, width, u), o.height, o.width,
                                o.resize_method, flip=self.mirror(u), mode=o.preprocess_mode,
                                image_mean=o.image_mean, ratio=ratio, color=self.color(u))
        return self.finish_image(image), self.one_hot(label), path

    def plan_cached_batch(self, paths: tf.Tensor, labels: tf.Tensor, positions: tf.Tensor, u: tf.Tensor):
        """A whole batch's geometry and resampling matrices in one set of ops (the image cache knows every
        size in advance): per image, that work is ~150 small ops, as costly as the resampling itself."""
        o = self.o
        sizes = tf.gather(self.sizes, positions)  # the full images' (geometry), kept at 1/ratio (JPEG scaling)
        kept = tf.gather(self.shapes, positions)
        height, width = sizes[:, 0], sizes[:, 1]
        zero = tf.zeros_like(height)
        entries = T.resample_entries(height, width, *self.geometry(height, width, u), zero, zero, kept[:, 0],
                                     kept[:, 1], o.height, o.width, o.channels, o.resize_method, flip=self.mirror(u),
                                     mode=o.preprocess_mode, image_mean=o.image_mean,
                                     ratio=tf.gather(self.ratios, positions), color=self.color(u))
        return (paths, labels, positions, u, *entries)

    def parse_cached(self, path: tf.Tensor, label: tf.Tensor, position: tf.Tensor, u: tf.Tensor,
                     *entries: tf.Tensor):
        """One image from the cache with its planned matrices: the heavy ops only."""
        o = self.o
        image = T.resample_apply(self.cached_window(position), entries, o.height, o.width, o.resize_method,
                                 mode=o.preprocess_mode, image_mean=o.image_mean, transposed=True)
        return self.finish_image(image), self.one_hot(label), path

    def finish_image(self, image: tf.Tensor) -> tf.Tensor:
        o = self.o
        return tf.ensure_shape(image, [o.height, o.width, o.channels])

    def one_hot(self, label: tf.Tensor) -> tf.Tensor:
        return tf.one_hot(label, self.n_classes, dtype=tf.float32)

    # -- 4. postprocess ------------------------------------------------------------------------------------

    def batches(self, examples: tuple[tf.Tensor, ...]) -> tf.data.Dataset:
        """The epoch's parsed images batched by the plan's segments (exactly plan.steps batches)."""
        out = None
        for start, count, batch in self.plan.segments:
            part = tf.data.Dataset.from_tensor_slices(tuple(t[start:start + count] for t in examples))
            if self.decoded is None:
                part = part.map(lambda p, y, k, u: self.parse_file(p, y, u), num_parallel_calls=self.num_calls,
                                deterministic=True)
            else:
                part = part.batch(batch).map(self.plan_cached_batch, num_parallel_calls=self.num_calls,
                                             deterministic=True)
                part = part.unbatch().map(self.parse_cached, num_parallel_calls=self.num_calls, deterministic=True)
            part = part.batch(batch)
            out = part if out is None else out.concatenate(part)
        return out

    def postprocess(self, batch_index: tf.Tensor, epoch: tf.Tensor, images, onehot, paths):
        """Mixup (training, mixup_alpha > 0) and the batch's output structure."""
        if self.o.mixup_alpha > 0:  # mixing after preprocessing is the same as before: the modes are affine
            s = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(self.base_seed + [0, 1], epoch), batch_index)
            lam = T.mixup_lambda(s, tf.shape(images)[0], self.o.mixup_alpha)
            images, onehot = T.mixup(images, onehot, lam)
        return (images, onehot, paths) if self.o.with_paths else (images, onehot)

    def epoch(self, epoch: tf.Tensor) -> tf.data.Dataset:
        """One epoch: plan -> decode -> parse -> postprocess."""
        batches = self.batches(self.epoch_examples(epoch))
        return batches.enumerate().map(lambda k, b: self.postprocess(k, epoch, *b), num_parallel_calls=self.num_calls,
                                       deterministic=True)
