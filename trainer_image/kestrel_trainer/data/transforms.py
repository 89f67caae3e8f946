"""Pure TensorFlow image transforms with the original tool's semantics (see docs/data.md).

Every function takes tensors (and explicit random draws where randomness is involved) and returns
tensors, so each one can be checked against a NumPy reference and the pipeline can feed them
stateless, seeded random numbers (deterministic under parallel `map`).

Geometry follows classification_tf1 (PIL-based): random crop resizes the whole image, aspect kept,
so that target/fraction fits (fraction ~ U(0.45, 1)), then cuts a random target-size window; center
crop resizes so both sides are >= target + 32 and cuts the middle. Resizing and cropping are fused
into `resample_crop`, two sparse matrix products that compute only the kept window: the same pixels
as resizing the whole image first (PIL-style, antialiased when shrinking) at a fraction of the cost,
with flip and preprocessing folded into the weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import numpy as np
import tensorflow as tf

from kestrel_trainer.data.jpeg_scale import RATIOS, JpegScale

CROP_PADDING = 32  # center crop: resize so that both sides are >= target + 32 (the original's rule)
RANDOM_CROP_MIN_FRACTION = 0.45
HUE_ROTATION_MAX_DEG = 25.0
SATURATION_SHIFT_MAX = 0.2
CONTRAST_SCALE_MAX = 0.1
CONTRAST_CENTER = 0.5
# The colour matrix works about RGB's grey axis (1, 1, 1) / sqrt(3): GREY projects onto it, CROSS is the cross
# product with it (k x v); HSV's hue is (up to its hexagon) the angle around that axis.
GREY = np.full((3, 3), 1.0 / 3.0)
CROSS = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / np.sqrt(3.0)

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
CAFFE_MEAN_GRAY = 117.3786
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.224, 0.224, 0.224)  # the original's: 0.224 for all three channels
TORCH_STD_RGB_PER_CHANNEL = (0.229, 0.224, 0.225)  # ImageNet's per-channel std: train_config.torch_std "per_channel"
TORCH_PER_CHANNEL = "torch_per_channel"  # the mode key of torch with the per-channel std (see torch_mode)
TORCH_MEAN_GRAY = 0.449
TORCH_STD_GRAY = 0.224

def to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Convert a decoded HxWxc image (c in 1..4) to `channels` (1 or 3), keeping its dtype.

    Alpha is dropped; grey is replicated to RGB; RGB becomes grey with the ITU-R 601 weights
    (0.299, 0.587, 0.114), rounded, as PIL's convert("L") does.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    c = tf.shape(image)[-1]
    colour = image[..., :3]
    grey = image[..., :1]

    def rgb_to_grey() -> tf.Tensor:
        weights = tf.constant([0.299, 0.587, 0.114], tf.float32)
        y = tf.reduce_sum(tf.cast(colour, tf.float32) * weights, axis=-1, keepdims=True)
        if image.dtype.is_integer:
            y = tf.round(y)
        return tf.cast(y, image.dtype)

    if channels == 3:
        return tf.cond(c >= 3, lambda: colour, lambda: tf.tile(grey, [1, 1, 3]))
    return tf.cond(c >= 3, rgb_to_grey, lambda: grey)


def _f64(x) -> tf.Tensor:
    return tf.cast(x, tf.float64)


def scaled_size(size: tf.Tensor, ratio: tf.Tensor) -> tf.Tensor:
    """libjpeg's output size at 1/ratio, ceil(size / ratio) (jpeg_scale.scaled_size, on tensors)."""
    size = tf.convert_to_tensor(size, tf.int32)
    return -tf.math.floordiv(-size, tf.cast(ratio, tf.int32))


def jpeg_ratio(height: tf.Tensor, width: tf.Tensor, scale: Optional[JpegScale]) -> tf.Tensor:
    """jpeg_scale.JpegScale.ratio on a JPEG header's size (int32 scalar; 1 when `scale` is None)."""
    if scale is None:
        return tf.constant(1, tf.int32)
    ratios, min_h, min_w = (tf.constant(v, tf.int32) for v in zip(*scale.thresholds()))
    allowed = (tf.cast(height, tf.int32) >= min_h) & (tf.cast(width, tf.int32) >= min_w)
    return tf.reduce_max(tf.where(allowed, ratios, 1))


def decode_jpeg_scaled(raw: tf.Tensor, ratio: tf.Tensor, crop: Optional[tf.Tensor] = None) -> tf.Tensor:
    """RGB uint8 pixels of a JPEG decoded at 1/ratio (ratio a tensor in jpeg_scale.RATIOS: decode_jpeg takes
    it as an attribute, so one branch per value); crop [y, x, h, w] in the reduced image's pixels."""
    def branch(r: int):
        if crop is None:
            return lambda: tf.io.decode_jpeg(raw, channels=3, ratio=r)
        return lambda: tf.image.decode_and_crop_jpeg(raw, crop, channels=3, ratio=r)

    index = tf.reduce_sum(tf.cast(tf.cast(ratio, tf.int32) >= tf.constant(RATIOS[1:], tf.int32), tf.int32))
    return tf.switch_case(index, [branch(r) for r in RATIOS])


def random_crop_box(
    height: tf.Tensor, width: tf.Tensor, target_h: int, target_w: int,
    fraction: tf.Tensor, u_top: tf.Tensor, u_left: tf.Tensor,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(resized_h, resized_w, top, left) of the original's random crop, in float64 like its Python code.

    fraction ~ U(0.45, 1); u_top, u_left ~ U(0, 1) pick the offset uniformly among all integer
    positions (random.randint(0, size - target) in the original).
    """
    h, w = _f64(height), _f64(width)
    before_w = _f64(target_w) / _f64(fraction)
    before_h = _f64(target_h) / _f64(fraction)
    ratio = tf.maximum(before_w / w, before_h / h)
    resized_w = tf.maximum(tf.cast(tf.floor(w * ratio), tf.int32), target_w)
    resized_h = tf.maximum(tf.cast(tf.floor(h * ratio), tf.int32), target_h)
    left = tf.cast(tf.floor(_f64(u_left) * _f64(resized_w - target_w + 1)), tf.int32)
    top = tf.cast(tf.floor(_f64(u_top) * _f64(resized_h - target_h + 1)), tf.int32)
    left = tf.minimum(left, resized_w - target_w)
    top = tf.minimum(top, resized_h - target_h)
    return resized_h, resized_w, top, left


def center_crop_box(
    height: tf.Tensor, width: tf.Tensor, target_h: int, target_w: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(resized_h, resized_w, top, left) of the original's center crop (the +32 rule).

    The offset is round(size / 2) - round(target / 2) with Python's round-half-to-even, which
    tf.round also uses, so odd sizes land on the same pixel as the original.
    """
    h, w = _f64(height), _f64(width)
    ratio = tf.maximum(_f64(target_w + CROP_PADDING) / w, _f64(target_h + CROP_PADDING) / h)
    resized_w = tf.maximum(tf.cast(tf.floor(w * ratio), tf.int32), target_w)
    resized_h = tf.maximum(tf.cast(tf.floor(h * ratio), tf.int32), target_h)
    left = tf.cast(tf.round(_f64(resized_w) / 2.0) - tf.round(_f64(target_w) / 2.0), tf.int32)
    top = tf.cast(tf.round(_f64(resized_h) / 2.0) - tf.round(_f64(target_h) / 2.0), tf.int32)
    left = tf.clip_by_value(left, 0, resized_w - target_w)
    top = tf.clip_by_value(top, 0, resized_h - target_h)
    return resized_h, resized_w, top, left


_RADIUS = {"bilinear": 1.0, "bicubic": 2.0}


def source_window(size: tf.Tensor, resized: tf.Tensor, offset: tf.Tensor, target: int, method: str,
                  ratio: tf.Tensor = 1) -> tuple[tf.Tensor, tf.Tensor]:
    """(start, length) of the source pixels that output pixels [offset, offset+target) of an image
    resized from `size` to `resized` depend on (kernel support, widened when shrinking, plus one
    pixel of margin). Decoding only this window of a JPEG gives the same result as decoding all of it.
    ratio: the source is the image decoded at 1/ratio (ceil(size / ratio) pixels); start and length count
    its pixels, the geometry (size, resized, offset) stays the full image's.
    """
    resized_f = _f64(resized)
    scale = resized_f * _f64(ratio) / _f64(size)
    size = scaled_size(size, ratio)
    support = _RADIUS[method] * tf.maximum(1.0 / scale, 1.0)
    first = (_f64(offset) + 0.5) / scale - 0.5 - support
    last = (_f64(offset) + _f64(target) - 0.5) / scale - 0.5 + support
    start = tf.clip_by_value(tf.cast(tf.floor(first), tf.int32) - 1, 0, size)
    end = tf.clip_by_value(tf.cast(tf.math.ceil(last), tf.int32) + 2, 0, size)
    return start, tf.maximum(end - start, 1)


def _kernel(method: str, x: tf.Tensor) -> tf.Tensor:
    """Resampling kernel at distance x (in kernel units): triangle, or Keys cubic with a = -0.5 (PIL's)."""
    ax = tf.abs(x)
    if method == "bilinear":
        return tf.maximum(1.0 - ax, 0.0)
    a = -0.5
    near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
    far = ((a * ax - 5.0 * a) * ax + 8.0 * a) * ax - 4.0 * a
    return tf.where(ax <= 1.0, near, tf.where(ax < 2.0, far, tf.zeros_like(ax)))


def axis_taps(size: tf.Tensor, resized: tf.Tensor, offset: tf.Tensor, target: int, method: str,
              start: tf.Tensor, length: tf.Tensor, ratio: tf.Tensor = 1) -> tuple[tf.Tensor, tf.Tensor]:
    """(taps [..., target, K] int32, weights [..., target, K] float32) of image axes, PIL-style.

    Output pixel i of the `target` pixels at `offset` in a `size` -> `resized` resize reads source
    pixels taps[i] (relative to a window of `length` pixels at `start`) with normalised weights; the
    kernel is widened by 1/scale when shrinking (antialiasing, as PIL). Taps outside the image get
    weight 0; K = ceil(2 * support) + 1 covers every non-zero weight. The arguments may be vectors
    (one entry per axis): computing both axes in one set of ops halves the per-image op overhead.
    ratio: the source pixels are the image decoded at 1/ratio (libjpeg's DCT scaling: ceil(size / ratio)
    pixels, pixel j covering full-size pixels [j * ratio, (j + 1) * ratio)); size, resized and offset stay
    the full image's geometry, so a crop box maps to the reduced pixels by / ratio.
    """
    if method not in _RADIUS:
        raise ValueError(f"resize method must be one of {sorted(_RADIUS)}, got {method!r}")
    full, ratio = (tf.convert_to_tensor(v, tf.int32) for v in (size, ratio))
    ratio = tf.broadcast_to(ratio, tf.shape(full))
    size, start, length = (tf.convert_to_tensor(v, tf.int32)[..., tf.newaxis, tf.newaxis]
                           for v in (scaled_size(full, ratio), start, length))
    scale = _f64(resized) * _f64(ratio) / _f64(full)
    stretch = tf.maximum(1.0 / scale, 1.0)
    support = _RADIUS[method] * stretch
    k = tf.cast(tf.math.ceil(2.0 * tf.reduce_max(support)), tf.int32) + 1
    centres = ((tf.range(target, dtype=tf.float64) + _f64(offset)[..., tf.newaxis] + 0.5)
               / scale[..., tf.newaxis])[..., tf.newaxis]
    first = tf.floor(centres - support[..., tf.newaxis, tf.newaxis])
    taps = tf.cast(first, tf.int32) + tf.range(k)
    weights = _kernel(method, (first + tf.range(k, dtype=tf.float64) + 0.5 - centres)
                      / stretch[..., tf.newaxis, tf.newaxis])
    weights = tf.where((taps >= 0) & (taps < size), weights, tf.zeros_like(weights))
    weights = weights / tf.reduce_sum(weights, axis=-1, keepdims=True)
    return tf.clip_by_value(taps - start, 0, length - 1), tf.cast(weights, tf.float32)


def _axis_entries(taps: tf.Tensor, weights: tf.Tensor, target: int, channels: int, flip: Optional[tf.Tensor],
                  order: tuple[int, ...], scale: tuple[float, ...], mix: Optional[tf.Tensor] = None
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """(indices [..., N, 2] int64, values [..., N]) of sparse [target * C, length * C] resampling matrices.

    Row (i, c) holds the weights of source entries (taps[i], order[c]). Folding a horizontal flip (rows
    reversed), a channel reorder (RGB -> BGR) and per-channel scales (1 / std) into the weights makes
    them free: no pass over the pixels of their own. Leading dims (a batch) are kept.
    mix [..., C, C]: a channel matrix instead of order and scale (the colour augmentation with them folded
    in): row (i, c) then holds weights[i] * mix[c, c'] for every source channel c' (C times the entries).
    """
    lead = tf.shape(taps)[:-2]
    k = tf.shape(taps)[-1]
    rows = tf.range(target)
    if flip is not None:
        rows = tf.where(tf.expand_dims(flip, -1), target - 1 - rows, rows)
    if mix is not None:
        rows = rows[..., tf.newaxis, tf.newaxis, tf.newaxis] * channels + tf.reshape(tf.range(channels),
                                                                                      [channels, 1, 1])
        cols = taps[..., tf.newaxis, tf.newaxis, :] * channels + tf.reshape(tf.range(channels), [channels, 1])
        values = weights[..., tf.newaxis, tf.newaxis, :] * mix[..., tf.newaxis, :, :, tf.newaxis]
        shape = tf.concat([lead, [target, channels, channels, k]], axis=0)
        flat = tf.concat([lead, [-1]], axis=0)
        indices = tf.stack([tf.reshape(tf.broadcast_to(rows, shape), flat),
                            tf.reshape(tf.broadcast_to(cols, shape), flat)], axis=-1)
        return tf.cast(indices, tf.int64), tf.reshape(tf.broadcast_to(values, shape), flat)
    rows = rows[..., tf.newaxis, tf.newaxis] * channels + tf.reshape(tf.range(channels), [channels, 1])
    cols = taps[..., tf.newaxis, :] * channels + tf.reshape(tf.constant(order, tf.int32), [channels, 1])
    values = weights[..., tf.newaxis, :]
    if any(v != 1.0 for v in scale):
        values = values * tf.reshape(tf.constant(scale, tf.float32), [channels, 1])
    shape = tf.concat([lead, [target, channels, k]], axis=0)
    flat = tf.concat([lead, [-1]], axis=0)
    indices = tf.stack([tf.reshape(tf.broadcast_to(rows, shape), flat), tf.reshape(cols, flat)], axis=-1)
    return tf.cast(indices, tf.int64), tf.reshape(tf.broadcast_to(values, shape), flat)


def _resample_mode(channels: int, mode: Optional[str], image_mean: Optional[Mapping[str, float]]
                   ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
    """(mean, scale = 1/std, channel order) that resample_apply folds in; identity without a mode."""
    if mode is None:
        return (0.0,) * channels, (1.0,) * channels, tuple(range(channels))
    mean, std, to_bgr = preprocess_constants(mode, channels, image_mean)
    order = tuple(reversed(range(channels))) if to_bgr else tuple(range(channels))
    return mean, tuple(1.0 / s for s in std), order


def color_fold(mode: Optional[str], image_mean: Optional[Mapping[str, float]],
               color: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(mix [..., 3, 3], subtract, lo, hi [..., 3]): color_matrix(*color) followed by the preprocess mode, as
    out = clip(mix x - subtract, lo, hi). Exact: the modes are a channel reorder, positive scales and a mean,
    so clipping before them is clipping after them to the mapped bounds."""
    mean, scale, order = _resample_mode(3, mode, image_mean)
    to_output = np.eye(3)[list(order)] * np.array(scale)[:, None]  # row c: scale[c] * x[order[c]]
    mean_out = tf.constant([m * s for m, s in zip(mean, scale)], tf.float32)
    matrix, offset, lo, hi = color_matrix(*color, to_output=to_output)
    return matrix, mean_out - offset, lo - mean_out, hi - mean_out


def resample_entries(
    height: tf.Tensor, width: tf.Tensor, resized_h: tf.Tensor, resized_w: tf.Tensor, top: tf.Tensor,
    left: tf.Tensor, y0: tf.Tensor, x0: tf.Tensor, hh: tf.Tensor, ww: tf.Tensor, target_h: int, target_w: int,
    channels: int, method: str = "bilinear", *, flip: Optional[tf.Tensor] = None, mode: Optional[str] = None,
    image_mean: Optional[Mapping[str, float]] = None, ratio: tf.Tensor = 1,
    color: Optional[tuple[tf.Tensor, tf.Tensor, tf.Tensor]] = None,
) -> tuple[tf.Tensor, ...]:
    """The two sparse matrices of resample_crop as (column indices, column values, row indices, row values),
    plus, with `color` (color_amounts: hue, saturation, contrast), the colour map's (subtract, lo, hi).

    Every argument may be a vector (one image per entry): the pipeline computes a whole batch's matrices
    in one set of ops, because ~150 small ops per image cost as much as the resampling itself. The
    source window of hh x ww pixels starts at (y0, x0) of a height x width image, decoded at 1/ratio (then
    y0, x0, hh, ww count the reduced image's pixels; the geometry stays the full size's: axis_taps). The
    colour augmentation (color_fold) rides in the column weights like the preprocessing: one 3x3 channel
    matrix per image.
    """
    _, scale, order = _resample_mode(channels, mode, image_mean)
    ratio = tf.convert_to_tensor(ratio, tf.int32)
    if color is not None and channels != 3:
        raise ValueError("colour augmentation needs 3 channels")
    mix, affine = None, ()
    if color is not None:
        mix, *affine = color_fold(mode, image_mean, color)
    taps, weights = axis_taps(tf.stack([height, width], -1), tf.stack([resized_h, resized_w], -1),
                              tf.stack([top, left], -1), max(target_h, target_w), method,
                              tf.stack([y0, x0], -1), tf.stack([hh, ww], -1), tf.stack([ratio, ratio], -1))
    col_idx, col_val = _axis_entries(taps[..., 1, :target_w, :], weights[..., 1, :target_w, :], target_w, channels,
                                     flip, order, scale, mix)
    row_idx, row_val = _axis_entries(taps[..., 0, :target_h, :], weights[..., 0, :target_h, :], target_h, 1,
                                     None, (0,), (1.0,))
    return (col_idx, col_val, row_idx, row_val, *affine)


def resample_apply(
    window: tf.Tensor, entries: tuple[tf.Tensor, ...], target_h: int, target_w: int,
    method: str = "bilinear", *, mode: Optional[str] = None, image_mean: Optional[Mapping[str, float]] = None,
    transposed: bool = False,
) -> tf.Tensor:
    """Apply one image's resample_entries to its source window ([hh, ww, C], or [ww, C, hh] when
    `transposed`, the image cache's layout): two sparse x dense products (columns, then rows), then the
    mean, or with colour augmentation its offset and clip (one subtraction and one clip, row-broadcast).
    float32 [th, tw, C]."""
    channels = window.shape[1 if transposed else -1]
    if channels is None:
        raise ValueError("resampling needs a static channel dimension")
    mean, scale, _ = _resample_mode(channels, mode, image_mean)
    shape = tf.shape(window)
    hh, ww = (shape[2], shape[0]) if transposed else (shape[0], shape[1])
    if not transposed:
        window = tf.transpose(window, [1, 2, 0])
    col_idx, col_val, row_idx, row_val, *affine = entries
    x = tf.cast(tf.reshape(window, tf.stack([ww * channels, hh])), tf.float32)
    cols_matrix = tf.SparseTensor(col_idx, col_val, tf.cast(tf.stack([target_w * channels, ww * channels]), tf.int64))
    cols = tf.sparse.sparse_dense_matmul(cols_matrix, x)  # [tw * C, hh]
    rows_matrix = tf.SparseTensor(row_idx, row_val, tf.cast(tf.stack([target_h, hh]), tf.int64))
    out = tf.sparse.sparse_dense_matmul(rows_matrix, tf.transpose(cols))  # [th, tw * C]: the final layout
    if affine:  # colour: the clip to its valid range also bounds bicubic's overshoot (after the colour map)
        subtract, lo, hi = (tf.tile(v, [target_w]) for v in affine)
        return tf.reshape(tf.clip_by_value(out - subtract, lo, hi), [target_h, target_w, channels])
    if method != "bilinear":  # bicubic overshoots; PIL clips to the 8-bit range
        out = tf.clip_by_value(out, 0.0, tf.constant([255.0 * s for s in scale] * target_w, tf.float32))
    if any(m != 0.0 for m in mean):  # row-broadcast: far cheaper than broadcasting over [..., C]
        out = out - tf.constant([m * s for m, s in zip(mean, scale)] * target_w, tf.float32)
    return tf.reshape(out, [target_h, target_w, channels])


def resample_crop(
    window: tf.Tensor, y0: tf.Tensor, x0: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
    resized_h: tf.Tensor, resized_w: tf.Tensor, top: tf.Tensor, left: tf.Tensor,
    target_h: int, target_w: int, method: str = "bilinear", *, flip: Optional[tf.Tensor] = None,
    mode: Optional[str] = None, image_mean: Optional[Mapping[str, float]] = None, transposed: bool = False,
    ratio: tf.Tensor = 1, color: Optional[tuple[tf.Tensor, tf.Tensor, tf.Tensor]] = None,
) -> tf.Tensor:
    """The target window at (top, left) of a height x width image resized to resized_h x resized_w,
    optionally mirrored (`flip`), colour-augmented (`color`: color_amounts) and preprocessed (`mode`), from the
    source pixels `window` (which start at row y0, column x0 and must hold source_window(...) of both axes).
    float32 [th, tw, C].
    transposed: `window` is laid out [W, C, H] (as the decoded-image cache keeps it) instead of [H, W, C].
    ratio: `window` comes from the image decoded at 1/ratio (JPEG DCT scaling; y0, x0 count its pixels).

    Two sparse matrix products (columns, then rows) compute only the kept pixels, PIL-style
    (antialiased when shrinking, bicubic clipped to 0..255). Flip, RGB -> BGR and 1/std ride in the
    column weights and the mean in one subtraction (with colour augmentation: its 3x3 matrix in the weights,
    its offset and clip in one subtraction and one clip), so a training image costs two passes over its
    pixels: about twice as fast as ScaleAndTranslate or crop_and_resize followed by separate flip and
    preprocess ops (bench/data_pipeline.py).
    """
    channels = window.shape[1 if transposed else -1]
    if channels is None:
        raise ValueError("resampling needs a static channel dimension")
    shape = tf.shape(window)
    hh, ww = (shape[2], shape[0]) if transposed else (shape[0], shape[1])
    entries = resample_entries(height, width, resized_h, resized_w, top, left, y0, x0, hh, ww, target_h, target_w,
                               channels, method, flip=flip, mode=mode, image_mean=image_mean, ratio=ratio,
                               color=color)
    return resample_apply(window, entries, target_h, target_w, method, mode=mode, image_mean=image_mean,
                          transposed=transposed)


def resize_and_crop(
    image: tf.Tensor, resized_h: tf.Tensor, resized_w: tf.Tensor, top: tf.Tensor, left: tf.Tensor,
    target_h: int, target_w: int, method: str = "bilinear",
) -> tf.Tensor:
    """The target_h x target_w window at (top, left) of `image` resized to resized_h x resized_w.

    Equal (to float rounding) to tf.image.resize(image, [resized_h, resized_w], method,
    antialias=True)[top:top+target_h, left:left+target_w], but only the window is computed.
    Antialiasing when shrinking matches PIL, which the original used. Returns float32 in [0, 255].
    """
    shape = tf.shape(image)
    zero = tf.constant(0, tf.int32)
    return resample_crop(image, zero, zero, shape[0], shape[1], resized_h, resized_w, top, left, target_h, target_w,
                         method)


def resize(image: tf.Tensor, target_h: int, target_w: int, method: str = "bilinear") -> tf.Tensor:
    """Plain resize to the target size (aspect not kept), as the original does without cropping."""
    zero = tf.constant(0, tf.int32)
    return resize_and_crop(image, tf.constant(target_h, tf.int32), tf.constant(target_w, tf.int32),
                           zero, zero, target_h, target_w, method)


def color_amounts(u: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Colour-augmentation amounts from three U(0, 1) draws (last axis; leading dims are kept): hue degrees
    ~ U(-25, 25), saturation ~ U(-0.2, 0.2), contrast ~ U(-0.1, 0.1) (the original's ranges)."""
    v = 2.0 * tf.cast(u, tf.float32) - 1.0
    return v[..., 0] * HUE_ROTATION_MAX_DEG, v[..., 1] * SATURATION_SHIFT_MAX, v[..., 2] * CONTRAST_SCALE_MAX


def color_matrix(hue_deg: tf.Tensor, saturation: tf.Tensor, contrast_scale: tf.Tensor,
                 to_output: Optional[np.ndarray] = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The colour augmentation as one affine map and one clip, on RGB in [0, 255]: out = clip(M x + offset, lo, hi).

    In the original's order (docs/data.md, "Colour augmentation"): hue rotated by `hue_deg` degrees about the
    grey axis (Rodrigues' rotation; positive turns red towards yellow, as HSV's hue), then the chroma (the part
    off the grey axis) scaled by (1 + saturation); greys and each pixel's (R + G + B) / 3 are kept. The result
    clipped to [0, 1]; contrast scaled about 0.5 by (1 + contrast_scale); clipped to [0, 1] again. The two clips
    are exactly one clip to per-image bounds, because the contrast map a is increasing:
    clip(a(clip(y, 0, 1)), 0, 1) = clip(a(y), max(0, a(0)), min(1, a(1))). Arguments may be vectors (a batch):
    M [..., 3, 3], offset, lo, hi [..., 3]. to_output: a constant 3x3 matrix applied after all of it (M, offset,
    lo and hi come out multiplied by it; color_fold's preprocessing), folded in NumPy: no extra ops.
    """
    out = np.eye(3) if to_output is None else np.asarray(to_output, np.float64)
    theta = tf.cast(hue_deg, tf.float32) * (np.pi / 180.0)
    chroma = 1.0 + tf.cast(saturation, tf.float32)
    contrast = 1.0 + tf.cast(contrast_scale, tf.float32)
    cos, sin, scale = (v[..., tf.newaxis, tf.newaxis] for v in (chroma * tf.cos(theta), chroma * tf.sin(theta),
                                                                 contrast))
    grey, off_grey, cross = (tf.constant(out @ m, tf.float32) for m in (GREY, np.eye(3) - GREY, CROSS))
    matrix = scale * (grey + cos * off_grey + sin * cross)
    offset = 255.0 * CONTRAST_CENTER * (1.0 - contrast)
    lo = tf.maximum(offset, 0.0)  # a(0)
    hi = tf.minimum(255.0 * contrast + offset, 255.0)  # a(255)
    ones = tf.constant(out.sum(axis=1), tf.float32)  # out @ (1, 1, 1)
    return matrix, *(v[..., tf.newaxis] * ones for v in (offset, lo, hi))


def adjust_color(image: tf.Tensor, hue_deg: tf.Tensor, saturation: tf.Tensor, contrast_scale: tf.Tensor
                 ) -> tf.Tensor:
    """color_matrix applied to one float RGB image [H, W, 3] in [0, 255] (the pipeline folds the same map into
    its resampling weights instead: resample_entries' `color`)."""
    matrix, offset, lo, hi = color_matrix(hue_deg, saturation, contrast_scale)
    out = tf.tensordot(tf.cast(image, tf.float32), matrix, [[2], [1]]) + offset
    return tf.clip_by_value(out, lo, hi)


def mixup_lambda(seed: tf.Tensor, batch: tf.Tensor, alpha: float) -> tf.Tensor:
    """Per-sample lambda ~ Beta(alpha, alpha) (as Ga/(Ga+Gb)), folded to max(lambda, 1 - lambda)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    ga = tf.random.stateless_gamma([batch], seed=seeds[0], alpha=alpha)
    gb = tf.random.stateless_gamma([batch], seed=seeds[1], alpha=alpha)
    total = ga + gb
    lam = tf.where(total > 0, ga / tf.where(total > 0, total, 1.0), 1.0)
    return tf.maximum(lam, 1.0 - lam)


def mixup(images: tf.Tensor, labels: tf.Tensor, lam: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mix each sample i with sample B-1-i (the batch reversed): x = l*x + (1-l)*x_rev, labels too."""
    lam_x = tf.reshape(lam, [-1, 1, 1, 1])
    lam_y = tf.reshape(lam, [-1, 1])
    images = lam_x * images + (1.0 - lam_x) * tf.reverse(images, axis=[0])
    labels = lam_y * labels + (1.0 - lam_y) * tf.reverse(labels, axis=[0])
    return images, labels


def preprocess_constants(
    mode: str, channels: int, image_mean: Optional[Mapping[str, float]] = None
) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """(mean, std, to_bgr) in 0..255 units so that out = (x[..., order] - mean) / std.

    caffe: BGR, mean (103.939, 116.779, 123.68) or grey 117.3786, overridden by image_mean
    (keys r, g, b or l), std 1. torch: x/255 minus (.485, .456, .406) over .224 for every channel, as
    the original (grey .449/.224); TORCH_PER_CHANNEL: over (.229, .224, .225) (see torch_mode).
    tf: x/127.5 - 1. image_mean only applies to caffe, as in the original.
    Export and DeepStream configs can use the same numbers (net-scale-factor = 1/std, offsets = mean).
    """
    if mode == "caffe":
        if channels == 3:
            if image_mean:
                missing = {"r", "g", "b"} - set(image_mean)
                if missing:
                    raise ValueError(f"image_mean for 3 channels needs keys r, g, b (missing {sorted(missing)})")
                mean: tuple[float, ...] = (image_mean["b"], image_mean["g"], image_mean["r"])
            else:
                mean = CAFFE_MEAN_BGR
            return tuple(float(m) for m in mean), (1.0, 1.0, 1.0), True
        if image_mean:
            if "l" not in image_mean:
                raise ValueError("image_mean for 1 channel needs the key l")
            return (float(image_mean["l"]),), (1.0,), False
        return (CAFFE_MEAN_GRAY,), (1.0,), False
    if mode in ("torch", TORCH_PER_CHANNEL):
        if channels == 3:
            std = TORCH_STD_RGB if mode == "torch" else TORCH_STD_RGB_PER_CHANNEL
            return (tuple(255.0 * m for m in TORCH_MEAN_RGB), tuple(255.0 * s for s in std), False)
        return (255.0 * TORCH_MEAN_GRAY,), (255.0 * TORCH_STD_GRAY,), False
    if mode == "tf":
        return (127.5,) * channels, (127.5,) * channels, False
    raise ValueError(f"preprocess_mode must be caffe, torch or tf, got {mode!r}")


def torch_mode(mode: str, torch_std: str = "original") -> str:
    """The mode key preprocess_constants takes: torch with train_config.torch_std "per_channel" is its own key."""
    return TORCH_PER_CHANNEL if mode == "torch" and torch_std == "per_channel" else mode


def preprocess(images: tf.Tensor, mode: str, image_mean: Optional[Mapping[str, float]] = None) -> tf.Tensor:
    """Apply a preprocess mode to float RGB/grey images in [0, 255] (any leading dims, channels last)."""
    channels = images.shape[-1]
    if channels is None:
        raise ValueError("preprocess needs a static channel dimension")
    mean, std, to_bgr = preprocess_constants(mode, channels, image_mean)
    x = tf.cast(images, tf.float32)
    if to_bgr:
        x = tf.reverse(x, axis=[-1])
    width = images.shape[-2] if images.shape.rank and images.shape.rank >= 2 else None
    if width is None:
        x = x - tf.constant(mean, tf.float32)
        return x if all(s == 1.0 for s in std) else x * tf.constant([1.0 / s for s in std], tf.float32)
    # Broadcasting a [C] vector over [..., W, C] is slow in TensorFlow; a [W * C] row over [..., W * C] is not.
    shape = tf.shape(x)
    rows = tf.reshape(x, tf.concat([shape[:-2], [width * channels]], axis=0))
    rows = rows - tf.constant(list(mean) * width, tf.float32)
    if any(s != 1.0 for s in std):
        rows = rows * tf.constant([1.0 / s for s in std] * width, tf.float32)
    return tf.reshape(rows, shape)
