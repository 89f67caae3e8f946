"""Every transform against an independent NumPy reference (the original's formulas, PIL-style resampling)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.data import transforms as T
from tests.data.numpy_refs import (
    ref_center_box,
    ref_color_hsv,
    ref_color_matrix,
    ref_preprocess,
    ref_random_box,
    ref_resize_crop,
)

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape,box", [
    ((7, 9), (20, 26, 3, 5)),      # upscale, window inside
    ((30, 24), (12, 10, 1, 2)),    # downscale (antialiased)
    ((11, 13), (11, 13, 0, 0)),    # identity size
])
def test_resize_and_crop_matches_pil_style_reference(method, shape, box):
    img = RNG.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    rh, rw, top, left = box
    th, tw = min(rh, 8), min(rw, 8)
    got = T.resize_and_crop(tf.constant(img), rh, rw, top, left, th, tw, method).numpy()
    np.testing.assert_allclose(got, ref_resize_crop(img, rh, rw, top, left, th, tw, method), atol=2e-3)


def test_plain_resize_ignores_aspect():
    img = RNG.integers(0, 256, size=(10, 30, 1), dtype=np.uint8)
    got = T.resize(tf.constant(img), 8, 8, "bilinear").numpy()
    np.testing.assert_allclose(got, ref_resize_crop(img, 8, 8, 0, 0, 8, 8, "bilinear"), atol=2e-3)


def test_random_crop_box_matches_the_original_formula():
    for _ in range(300):
        h, w = (int(v) for v in RNG.integers(5, 400, size=2))
        th, tw = (int(v) for v in RNG.integers(16, 240, size=2))
        f, uy, ux = RNG.uniform(0.45, 1.0), RNG.uniform(), RNG.uniform()
        got = [int(v) for v in T.random_crop_box(h, w, th, tw, tf.constant(f, tf.float64), uy, ux)]
        assert got == list(ref_random_box(h, w, th, tw, f, uy, ux)), (h, w, th, tw, f)
        rh, rw, top, left = got
        assert 0 <= top <= rh - th and 0 <= left <= rw - tw
        # the limiting side is resized to target / fraction (truncated), the other one is larger
        assert -1 < min(rw - tw / f, rh - th / f) <= 1e-6
        assert abs(rh / h - rw / w) <= 1.0 / min(h, w)  # aspect kept, up to truncation


def test_center_crop_box_matches_the_original_including_odd_sizes():
    for h, w, th, tw in [(28, 28, 224, 224), (300, 451, 224, 224), (99, 40, 32, 32), (500, 375, 17, 33),
                         (225, 225, 225, 225), (31, 57, 16, 16)]:
        got = [int(v) for v in T.center_crop_box(h, w, th, tw)]
        assert got == list(ref_center_box(h, w, th, tw)), (h, w, th, tw)
        rh, rw, top, left = got
        assert min(rh - th, rw - tw) >= 31  # both sides at least target + 32, to int truncation


def test_to_channels():
    rgb = RNG.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 7, np.uint8)], axis=-1)
    grey = RNG.integers(0, 256, size=(4, 5, 1), dtype=np.uint8)
    np.testing.assert_array_equal(T.to_channels(tf.constant(rgba), 3).numpy(), rgb)
    np.testing.assert_array_equal(T.to_channels(tf.constant(grey), 3).numpy(), np.repeat(grey, 3, axis=-1))
    want = np.round(rgb.astype(np.float64) @ [0.299, 0.587, 0.114])[..., None]
    np.testing.assert_allclose(T.to_channels(tf.constant(rgb), 1).numpy(), want, atol=1)
    np.testing.assert_array_equal(T.to_channels(tf.constant(grey), 1).numpy(), grey)


COLOR_AMOUNTS = [(25.0, 0.2, 0.1), (-25.0, -0.2, -0.1), (7.5, 0.05, -0.03), (-12.0, 0.2, -0.1), (0.0, 0.0, 0.0)]


@pytest.mark.parametrize("amounts", COLOR_AMOUNTS)
def test_color_matrix_matches_the_documented_formula(amounts):
    img = RNG.uniform(0, 255, size=(6, 7, 3))
    img[0, :3] = [[0, 0, 0], [255, 255, 255], [255, 0, 0]]  # black, white and a pure colour: the clips are hit
    got = T.adjust_color(tf.constant(img, tf.float32), *amounts).numpy()
    np.testing.assert_allclose(got, ref_color_matrix(img, *amounts), atol=2e-3)


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("mode,mean", [("caffe", None), ("caffe", {"r": 120.0, "g": 110.5, "b": 100.25}),
                                       ("torch", None), ("torch_per_channel", None), ("tf", None)])
def test_colour_folded_into_the_resampling_weights_equals_resample_then_colour_then_preprocess(method, mode, mean):
    """One pass: the 3x3 colour matrix and the preprocessing ride in the column weights, offset and clip after.
    Bilinear: the same as resampling, colour augmentation and preprocessing one after the other; bicubic: the
    same where bicubic does not overshoot 0..255 (the 8-bit clip that PIL applies before the colour map is the
    colour map's clip here, after it)."""
    img = RNG.integers(0, 256, size=(30, 24, 3), dtype=np.uint8)
    if method == "bicubic":
        img = np.clip(img, 60, 190).astype(np.uint8)  # no overshoot past 0..255 on this ramp-free image
    amounts = (-18.0, 0.15, -0.07)
    box = (20, 16, 3, 2)
    z = tf.constant(0)
    got = T.resample_crop(tf.constant(img), z, z, 30, 24, *box, 9, 8, method, flip=tf.constant(True), mode=mode,
                          image_mean=mean, color=amounts).numpy()
    want = ref_preprocess(ref_color_matrix(ref_resize_crop(img, *box, 9, 8, method), *amounts), mode, mean)
    atol = 3e-3 if mode == "caffe" else 1e-4  # caffe: 0..255 units; the others: about 1/60 of them
    np.testing.assert_allclose(got, want[:, ::-1], atol=atol)


def test_colour_per_image_from_a_batch_of_amounts():
    """resample_entries computes a batch's colour matrices in one set of ops: each image gets its own."""
    img = RNG.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    amounts = [(20.0, -0.1, 0.05), (-5.0, 0.2, -0.1)]
    batch = tuple(tf.constant(v, tf.float32) for v in zip(*amounts))
    n = tf.constant([12, 12])
    w = tf.constant([10, 10])
    z = tf.zeros([2], tf.int32)
    entries = T.resample_entries(n, w, tf.constant([8, 8]), tf.constant([7, 7]), z, z, z, z, n, w, 8, 7, 3,
                                 mode="tf", color=batch)
    for i, a in enumerate(amounts):
        got = T.resample_apply(tf.constant(img), tuple(e[i] for e in entries), 8, 7, mode="tf").numpy()
        want = ref_preprocess(ref_color_matrix(ref_resize_crop(img, 8, 7, 0, 0, 8, 7, "bilinear"), *a), "tf")
        np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("contrast", [0.1, -0.1, 0.04])
def test_where_the_maths_is_the_same_as_the_hsv_version_the_output_is_the_same(contrast):
    """Contrast (the whole range, clips included) and hue rotation of greys are the same maths in the original's
    HSV transform and in the matrix: equal within float32 rounding."""
    img = RNG.uniform(0, 255, size=(5, 6, 3))
    got = T.adjust_color(tf.constant(img, tf.float32), 0.0, 0.0, contrast).numpy()
    np.testing.assert_allclose(got, ref_color_hsv(img, 0.0, 0.0, contrast), atol=2e-3)
    greys = np.repeat(RNG.uniform(0, 255, size=(5, 6, 1)), 3, axis=-1)
    got = T.adjust_color(tf.constant(greys, tf.float32), 25.0, 0.0, contrast).numpy()
    np.testing.assert_allclose(got, ref_color_hsv(greys, 25.0, 0.0, contrast), atol=2e-3)


def test_where_the_maths_differs_from_the_original_hsv_transform_the_difference_is_what_the_docs_say():
    """Hue: a rotation about the grey axis instead of HSV's hexagonal one; on uniformly random colours at the
    largest angle (25 degrees) they differ by 13.3 levels on average (of 255; 95th percentile 32), and turn the
    same way (the opposite rotation is 38 levels away). Saturation: a scale of the chroma by (1 + s) instead of
    HSV's additive shift of s (15.5 / 18.9 levels on average at s = +-0.2, the opposite change ~25 levels away),
    which keeps greys grey where the original tints them."""
    img = RNG.uniform(0, 255, size=(40, 50, 3))
    for hue in (25.0, -25.0):
        ours = T.adjust_color(tf.constant(img, tf.float32), hue, 0.0, 0.0).numpy()
        assert 10.0 < np.abs(ours - ref_color_hsv(img, hue, 0.0, 0.0)).mean() < 16.0
        assert np.abs(ours - ref_color_hsv(img, -hue, 0.0, 0.0)).mean() > 33.0
    for sat in (0.2, -0.2):
        ours = T.adjust_color(tf.constant(img, tf.float32), 0.0, sat, 0.0).numpy()
        same = np.abs(ours - ref_color_hsv(img, 0.0, sat, 0.0)).mean()
        assert 12.0 < same < 22.0
        assert np.abs(ours - ref_color_hsv(img, 0.0, -sat, 0.0)).mean() > same + 4.0  # the same direction
    grey = np.full((1, 1, 3), 128.0)
    np.testing.assert_allclose(T.adjust_color(tf.constant(grey, tf.float32), 0.0, 0.2, 0.0).numpy(), grey,
                               atol=1e-3)
    assert np.ptp(ref_color_hsv(grey, 0.0, 0.2, 0.0)) > 20.0  # the original's shift tints a grey pixel


def test_color_amounts_from_uniform_draws_stay_in_range():
    uniforms = tf.random.stateless_uniform([200, 3], seed=[3, 0])  # as the pipeline's per-epoch draw table
    draws = np.array([[float(v) for v in T.color_amounts(u)] for u in uniforms])
    assert np.all(np.abs(draws) <= [25.0, 0.2, 0.1]) and np.all(draws.std(axis=0) > [5.0, 0.04, 0.02])


def test_flip():
    img = RNG.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    zero = tf.constant(0)

    def same_size(flip: bool) -> np.ndarray:  # resampling at scale 1 copies pixels; the flip rides in the weights
        return T.resample_crop(tf.constant(img), zero, zero, 3, 4, 3, 4, 0, 0, 3, 4, flip=tf.constant(flip)).numpy()

    np.testing.assert_array_equal(same_size(True), img[:, ::-1])
    np.testing.assert_array_equal(same_size(False), img)


@pytest.mark.parametrize("mode,channels,mean", [
    ("caffe", 3, None), ("caffe", 3, {"r": 120.0, "g": 110.5, "b": 100.25}), ("caffe", 1, None),
    ("caffe", 1, {"l": 50.0}), ("torch", 3, None), ("torch", 1, None), ("tf", 3, None), ("tf", 1, None),
    ("torch_per_channel", 3, None),
])
def test_preprocess_modes(mode, channels, mean):
    x = RNG.uniform(0, 255, size=(2, 3, 4, channels))
    got = T.preprocess(tf.constant(x, tf.float32), mode, mean).numpy()
    np.testing.assert_allclose(got, ref_preprocess(x, mode, mean), atol=1e-4)


def test_preprocess_rejects_wrong_mean_keys_and_modes():
    with pytest.raises(ValueError, match="r, g, b"):
        T.preprocess_constants("caffe", 3, {"l": 1.0})
    with pytest.raises(ValueError, match="caffe, torch or tf"):
        T.preprocess_constants("bgr", 3)


def test_mixup_mixes_with_the_reversed_batch_and_labels_sum_to_one():
    x = RNG.uniform(size=(5, 2, 2, 3)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 1]]
    lam = T.mixup_lambda(tf.constant([1, 2], tf.int64), 5, 0.4).numpy()
    assert np.all((lam >= 0.5) & (lam <= 1.0))
    mx, my = (t.numpy() for t in T.mixup(tf.constant(x), tf.constant(y), tf.constant(lam)))
    lx = lam[:, None, None, None]
    np.testing.assert_allclose(mx, lx * x + (1 - lx) * x[::-1], atol=1e-6)
    np.testing.assert_allclose(my, lam[:, None] * y + (1 - lam[:, None]) * y[::-1], atol=1e-6)
    np.testing.assert_allclose(my.sum(axis=1), 1.0, atol=1e-6)


def test_mixup_lambda_is_a_folded_beta():
    # Beta(1, 1) folded at 0.5 is U(0.5, 1): mean 0.75, var 1/48
    lam = T.mixup_lambda(tf.constant([3, 4], tf.int64), 20000, 1.0).numpy()
    assert abs(lam.mean() - 0.75) < 0.005 and abs(lam.var() - 1 / 48) < 0.002
    small = T.mixup_lambda(tf.constant([3, 4], tf.int64), 20000, 0.1).numpy()
    assert small.mean() > 0.9  # small alpha: mostly nearly unmixed


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_decoding_only_the_needed_jpeg_window_gives_the_full_decode_result(method):
    import io

    from PIL import Image

    smooth = np.cumsum(RNG.integers(0, 9, size=(61, 83, 3)), axis=1) % 256
    buf = io.BytesIO()
    Image.fromarray(smooth.astype(np.uint8)).save(buf, format="JPEG", quality=92)
    raw = tf.constant(buf.getvalue())
    full = tf.io.decode_jpeg(raw, channels=3)
    for _ in range(40):
        th, tw = (int(v) for v in RNG.integers(8, 40, size=2))
        box = T.random_crop_box(61, 83, th, tw, tf.constant(RNG.uniform(0.45, 1.0), tf.float64),
                                RNG.uniform(), RNG.uniform())
        rh, rw, top, left = box
        y0, hh = T.source_window(61, rh, top, th, method)
        x0, ww = T.source_window(83, rw, left, tw, method)
        window = tf.image.decode_and_crop_jpeg(raw, tf.stack([y0, x0, hh, ww]), channels=3)
        got = T.resample_crop(window, y0, x0, 61, 83, *box, th, tw, method).numpy()
        want = T.resize_and_crop(full, *box, th, tw, method).numpy()
        np.testing.assert_allclose(got, want, atol=3e-3)  # float32 rounding on a 0..255 scale
