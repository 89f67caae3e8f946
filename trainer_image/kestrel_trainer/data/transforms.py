"""Pure TensorFlow image transforms with the original tool's semantics (see docs/data.md).

Every function takes tensors (and explicit random draws where randomness is involved) and returns
tensors, so each one can be checked against a NumPy reference and the pipeline can feed them
stateless, seeded random numbers (deterministic under parallel `map`).

Geometry follows classification_tf1 (PIL-based): random crop resizes the whole image, aspect kept,
so that target/fraction fits (fraction ~ U(0.45, 1)), then cuts a random target-size window; center
crop resizes so both sides are >= target + 32 and cuts the middle. Resizing and cropping are fused
into one `ScaleAndTranslate` call that computes only the kept window: the same pixels as resizing
the whole image first (PIL-style, antialiased when shrinking) at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import tensorflow as tf

CROP_PADDING = 32  # center crop: resize so that both sides are >= target + 32 (the original's rule)
RANDOM_CROP_MIN_FRACTION = 0.45
HUE_ROTATION_MAX_DEG = 25.0
SATURATION_SHIFT_MAX = 0.2
CONTRAST_SCALE_MAX = 0.1
CONTRAST_CENTER = 0.5

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
CAFFE_MEAN_GRAY = 117.3786
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)  # the original uses 0.224 for all three channels
TORCH_MEAN_GRAY = 0.449
TORCH_STD_GRAY = 0.224

_KERNELS = {"bilinear": "triangle", "bicubic": "keyscubic"}


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


def source_window(size: tf.Tensor, resized: tf.Tensor, offset: tf.Tensor, target: int, method: str
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """(start, length) of the source pixels that output pixels [offset, offset+target) of an image
    resized from `size` to `resized` depend on (kernel support, widened when shrinking, plus one
    pixel of margin). Decoding only this window of a JPEG gives the same result as decoding all of it.
    """
    size_f, resized_f = _f64(size), _f64(resized)
    scale = resized_f / size_f
    support = _RADIUS[method] * tf.maximum(1.0 / scale, 1.0)
    first = (_f64(offset) + 0.5) / scale - 0.5 - support
    last = (_f64(offset) + _f64(target) - 0.5) / scale - 0.5 + support
    start = tf.clip_by_value(tf.cast(tf.floor(first), tf.int32) - 1, 0, size)
    end = tf.clip_by_value(tf.cast(tf.math.ceil(last), tf.int32) + 2, 0, size)
    return start, tf.maximum(end - start, 1)


def resize_window_and_crop(
    window: tf.Tensor, y0: tf.Tensor, x0: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
    resized_h: tf.Tensor, resized_w: tf.Tensor, top: tf.Tensor, left: tf.Tensor,
    target_h: int, target_w: int, method: str = "bilinear",
) -> tf.Tensor:
    """resize_and_crop of a height x width image of which only `window` (starting at y0, x0) is given.

    The window must hold source_window(...) for both axes; the result then equals resize_and_crop
    on the whole image (up to float rounding).
    """
    if method not in _KERNELS:
        raise ValueError(f"resize method must be one of {sorted(_KERNELS)}, got {method!r}")
    scale = tf.stack([
        tf.cast(resized_h, tf.float32) / tf.cast(height, tf.float32),
        tf.cast(resized_w, tf.float32) / tf.cast(width, tf.float32),
    ])
    translation = tf.cast(tf.stack([y0, x0]), tf.float32) * scale - tf.cast(tf.stack([top, left]), tf.float32)

    def general() -> tf.Tensor:
        return tf.raw_ops.ScaleAndTranslate(
            images=window[tf.newaxis],
            size=tf.constant([target_h, target_w], tf.int32),
            scale=scale,
            translation=translation,
            kernel_type=_KERNELS[method],
            antialias=True,
        )[0]

    if method == "bilinear" and target_h > 1 and target_w > 1:
        # Enlarging with the triangle kernel is plain half-pixel bilinear interpolation with clamped
        # edges; crop_and_resize computes that ~3x faster. Shrinking keeps ScaleAndTranslate (antialias).
        out = tf.cond(tf.reduce_all(scale >= 1.0), lambda: _bilinear_enlarge(window, scale, translation,
                                                                            target_h, target_w), general)
        return out  # bilinear weights are a convex combination: no overshoot to clip
    # Bicubic overshoots; PIL clips to the 8-bit range.
    return tf.clip_by_value(general(), 0.0, 255.0)


def _bilinear_enlarge(window: tf.Tensor, scale: tf.Tensor, translation: tf.Tensor, target_h: int, target_w: int
                      ) -> tf.Tensor:
    """ScaleAndTranslate(triangle) for scale >= 1 via crop_and_resize on the edge-padded window.

    Output pixel i samples window coordinate (i + 0.5 - t) / s - 0.5 (pixel centres at integers);
    one replicated pixel of padding turns crop_and_resize's out-of-range extrapolation into the
    edge clamping ScaleAndTranslate does.
    """
    # float32 first: crop_and_resize is about twice as fast on float32 as on uint8 input.
    padded = tf.pad(tf.cast(window, tf.float32), [[1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    size = tf.cast(tf.shape(padded)[:2], tf.float32) - 1.0  # crop_and_resize maps [0, 1] to [0, size - 1]
    start = (0.5 - translation) / scale + 0.5  # "- 0.5 + 1": centre convention, then the padding
    span = tf.constant([target_h - 1, target_w - 1], tf.float32) / scale
    box = tf.concat([start / size, (start + span) / size], axis=0)[tf.newaxis]
    return tf.image.crop_and_resize(padded[tf.newaxis], box, [0], [target_h, target_w])[0]


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
    return resize_window_and_crop(image, zero, zero, shape[0], shape[1], resized_h, resized_w, top, left,
                                  target_h, target_w, method)


def resize(image: tf.Tensor, target_h: int, target_w: int, method: str = "bilinear") -> tf.Tensor:
    """Plain resize to the target size (aspect not kept), as the original does without cropping."""
    zero = tf.constant(0, tf.int32)
    return resize_and_crop(image, tf.constant(target_h, tf.int32), tf.constant(target_w, tf.int32),
                           zero, zero, target_h, target_w, method)


def adjust_color(image: tf.Tensor, hue_deg: tf.Tensor, saturation_shift: tf.Tensor,
                 contrast_scale: tf.Tensor) -> tf.Tensor:
    """The original's colour augmentation with given amounts, on RGB float images in [0, 255].

    In [0, 1]: rotate hue by `hue_deg` degrees, add `saturation_shift` to saturation (clipped to
    [0, 1]), then scale contrast about 0.5 by (1 + contrast_scale) and clip.
    """
    x = image / 255.0
    hsv = tf.image.rgb_to_hsv(x)
    hue = tf.math.floormod(hsv[..., 0] + tf.cast(hue_deg, tf.float32) / 360.0, 1.0)
    sat = tf.clip_by_value(hsv[..., 1] + tf.cast(saturation_shift, tf.float32), 0.0, 1.0)
    x = tf.image.hsv_to_rgb(tf.stack([hue, sat, hsv[..., 2]], axis=-1))
    x = (x - CONTRAST_CENTER) * (1.0 + tf.cast(contrast_scale, tf.float32)) + CONTRAST_CENTER
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def random_color_amounts(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(hue degrees ~ U(-25, 25), saturation shift ~ U(-0.2, 0.2), contrast scale ~ U(-0.1, 0.1))."""
    u = tf.random.stateless_uniform([3], seed=seed, minval=-1.0, maxval=1.0)
    return u[0] * HUE_ROTATION_MAX_DEG, u[1] * SATURATION_SHIFT_MAX, u[2] * CONTRAST_SCALE_MAX


def flip_left_right(image: tf.Tensor, do_flip: tf.Tensor) -> tf.Tensor:
    """Mirror an HxWxC image horizontally when `do_flip` is true."""
    return tf.cond(do_flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


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
    (keys r, g, b or l), std 1. torch: x/255 minus (.485, .456, .406) over (.229, .224, .225)
    (grey .449/.224). tf: x/127.5 - 1. image_mean only applies to caffe, as in the original.
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
    if mode == "torch":
        if channels == 3:
            return (tuple(255.0 * m for m in TORCH_MEAN_RGB), tuple(255.0 * s for s in TORCH_STD_RGB), False)
        return (255.0 * TORCH_MEAN_GRAY,), (255.0 * TORCH_STD_GRAY,), False
    if mode == "tf":
        return (127.5,) * channels, (127.5,) * channels, False
    raise ValueError(f"preprocess_mode must be caffe, torch or tf, got {mode!r}")


def preprocess(images: tf.Tensor, mode: str, image_mean: Optional[Mapping[str, float]] = None) -> tf.Tensor:
    """Apply a preprocess mode to float RGB/grey images in [0, 255] (any leading dims, channels last)."""
    channels = images.shape[-1]
    if channels is None:
        raise ValueError("preprocess needs a static channel dimension")
    mean, std, to_bgr = preprocess_constants(mode, channels, image_mean)
    x = tf.cast(images, tf.float32)
    if to_bgr:
        x = tf.reverse(x, axis=[-1])
    x = x - tf.constant(mean, tf.float32)
    return x if all(s == 1.0 for s in std) else x * tf.constant([1.0 / s for s in std], tf.float32)
