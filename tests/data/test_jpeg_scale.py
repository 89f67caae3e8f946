"""Decode less: JPEGs decoded at 1/2, 1/4 or 1/8 (libjpeg's DCT scaling) when the output allows it.

The rule's cases are computed by hand; the reduced decode is checked against PIL's draft mode (the same
libjpeg scaling, another binding) and against a full decode + area average; the resampler's geometry on a
reduced image against an exact answer (a linear ramp) and the NumPy reference; the pipeline with and without
the reduction on a large JPEG of real (Fashion-MNIST) pixels.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kestrel_trainer.data import decoded as D
from kestrel_trainer.data import folders, pipeline
from kestrel_trainer.data import transforms as T
from kestrel_trainer.data.datasets import fashion_mnist as fm
from kestrel_trainer.data.jpeg_scale import JpegScale, scaled_size
from tests.data.helpers import fashion_mosaic, model_spec, pipeline_options
from tests.data.numpy_refs import ref_resize_crop

RNG = np.random.default_rng(5)
CROP = JpegScale.for_geometry(224, 224, random_crop_min_fraction=0.45)
CENTER = JpegScale.for_geometry(224, 224, center_crop_padding=32)
PLAIN = JpegScale.for_geometry(224, 224)


# -- the rule ----------------------------------------------------------------------------------------------

def test_thresholds_by_hand():
    # random crop, 224 at f = 0.45: the region spans 224 / 0.45 = 4480/9 = 497.78 source pixels at the least;
    # r allowed from ceil(r * 4480/9): 996, 1992, 3983
    assert CROP.thresholds() == ((2, 996, 996), (4, 1992, 1992), (8, 3983, 3983))
    # center crop: resized so both sides are >= 224 + 32 = 256: 512, 1024, 2048
    assert CENTER.thresholds() == ((2, 512, 512), (4, 1024, 1024), (8, 2048, 2048))
    # plain resize to 224 x 300 (h x w): 448/600, 896/1200, 1792/2400
    assert JpegScale.for_geometry(224, 300).thresholds() == ((2, 448, 600), (4, 896, 1200), (8, 1792, 2400))


@pytest.mark.parametrize("scale, height, width, ratio", [
    (CROP, 3000, 4000, 4),   # a 12 MP photo, random crop: 3000 >= 1992 but < 3983
    (CROP, 3983, 3983, 8),
    (CROP, 3982, 4000, 4),   # one row short of 1/8
    (CROP, 996, 996, 2),
    (CROP, 995, 5000, 1),    # the short side decides
    (CENTER, 3000, 4000, 8),
    (CENTER, 2047, 4000, 4),
    (CENTER, 511, 511, 1),
    (PLAIN, 2000, 3000, 8),
    (JpegScale.for_geometry(224, 300), 2000, 2399, 4),  # the width needs 8 * 300 = 2400
    (PLAIN, 28, 28, 1),
])
def test_ratio_cases(scale, height, width, ratio):
    assert scale.ratio(height, width) == ratio
    assert scale.ratios(np.array([height]), np.array([width])).tolist() == [ratio]
    assert int(T.jpeg_ratio(tf.constant(height), tf.constant(width), scale)) == ratio  # the pipeline's form
    assert int(T.jpeg_ratio(height, width, None)) == 1


def test_the_chosen_ratio_never_makes_the_resampler_enlarge():
    """At the chosen r, the pipeline's own geometry (smallest random-crop fraction, center crop) scales the
    image decoded at 1/r by <= 1 on both axes: the region keeps at least the output's pixels."""
    sizes = RNG.integers(200, 6000, size=(300, 2))
    for scale, box in ((CROP, lambda h, w: T.random_crop_box(h, w, 224, 224, tf.constant(0.45, tf.float64), 0.5,
                                                             0.5)),
                       (CENTER, lambda h, w: T.center_crop_box(h, w, 224, 224))):
        ratios = scale.ratios(sizes[:, 0], sizes[:, 1])
        assert set(ratios.tolist()) == {1, 2, 4, 8}
        rh, rw, _, _ = (t.numpy() for t in box(tf.constant(sizes[:, 0], tf.int32), tf.constant(sizes[:, 1],
                                                                                                 tf.int32)))
        reduced = ratios > 1  # at r = 1 small images are enlarged, as without the reduction
        assert np.all(rh * ratios <= sizes[:, 0], where=reduced) and np.all(rw * ratios <= sizes[:, 1], where=reduced)


def test_scaled_size_is_libjpegs_ceil():
    raw = _jpeg(fashion_mosaic(37, 61, tile=28) if os.path.isdir(fm.DEFAULT_SOURCE) else _smooth(37, 61))
    for r in (1, 2, 4, 8):
        shape = tf.io.decode_jpeg(raw, ratio=r).shape
        assert (shape[0], shape[1]) == (scaled_size(37, r), scaled_size(61, r)) == (-(-37 // r), -(-61 // r))
        assert int(T.scaled_size(37, r)) == scaled_size(37, r)


# -- the reduced decode ------------------------------------------------------------------------------------

def _smooth(h, w):
    return (np.cumsum(RNG.integers(0, 9, size=(h, w, 3)), axis=1) % 256).astype(np.uint8)


def _jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo():
    """A 1001 x 1403 JPEG of real pixels (sizes not multiples of 8: libjpeg's partial last blocks)."""
    if not os.path.isdir(fm.DEFAULT_SOURCE):
        pytest.skip(f"needs the Debian package: {fm.INSTALL_HINT}")
    return _jpeg(fashion_mosaic(1001, 1403, seed=3))


@pytest.mark.parametrize("ratio", [2, 4, 8])
def test_reduced_decode_matches_pil_draft(photo, ratio):
    """PIL's draft() asks the same libjpeg for the same DCT scaling. TensorFlow decodes with libjpeg's fast
    integer IDCT (its default, kept: the full decode is unchanged), PIL with the accurate one. Measured on this
    image: at 1/4 and 1/8 identical; at 1/2 max 2 levels, mean abs 0.60 (at 1/1, for comparison, max 5, mean
    0.90: the two IDCTs differ most at full size)."""
    ours = T.decode_jpeg_scaled(tf.constant(photo), tf.constant(ratio)).numpy().astype(np.int16)
    im = Image.open(io.BytesIO(photo))
    im.draft("RGB", (1403 // ratio, 1001 // ratio))
    pil = np.asarray(im.convert("RGB"), np.int16)
    assert ours.shape == pil.shape == (scaled_size(1001, ratio), scaled_size(1403, ratio), 3)
    diff = np.abs(ours - pil)
    assert diff.max() <= (3 if ratio == 2 else 0) and diff.mean() < (1.0 if ratio == 2 else 0.01)


def _area(full: np.ndarray, r: int) -> np.ndarray:
    """Mean of each r x r block (the last partial blocks padded by repeating the edge, as libjpeg does)."""
    h, w = full.shape[:2]
    padded = np.pad(full.astype(np.float64), ((0, -h % r), (0, -w % r), (0, 0)), mode="edge")
    return padded.reshape(padded.shape[0] // r, r, padded.shape[1] // r, r, 3).mean(axis=(1, 3))


@pytest.mark.parametrize("ratio", [2, 4, 8])
def test_reduced_decode_is_close_to_full_decode_plus_area_average(photo, ratio):
    """Looser: DCT scaling is not exactly a box filter. Measured on this image (mean abs / max levels): 1/2
    0.78 / 22, 1/4 1.08 / 13, 1/8 1.00 / 12 (the largest at the tiles' sharp edges)."""
    full = tf.io.decode_jpeg(photo, channels=3).numpy()
    ours = T.decode_jpeg_scaled(tf.constant(photo), tf.constant(ratio)).numpy().astype(np.float64)
    diff = np.abs(ours - _area(full, ratio))
    assert diff.mean() < 1.5 and diff.max() < 60


@pytest.mark.parametrize("ratio", [2, 4, 8])
def test_a_window_decoded_at_reduced_scale_is_the_same_pixels_as_all_of_it(photo, ratio):
    # (at full size, for comparison, a window may differ by up to 2 levels at chroma block edges: measured
    # on one pixel of the second window; the existing cached-vs-decoded test allows for it)
    whole = T.decode_jpeg_scaled(tf.constant(photo), tf.constant(ratio)).numpy()
    for y, x, h, w in ((0, 0, 5, 7), (9, 13, 40, 31), (scaled_size(1001, ratio) - 11, 3, 11, 17)):
        window = T.decode_jpeg_scaled(tf.constant(photo), tf.constant(ratio), tf.constant([y, x, h, w])).numpy()
        np.testing.assert_array_equal(window, whole[y:y + h, x:x + w])


# -- geometry on the reduced image ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("ratio, height, width", [(2, 301, 403), (4, 517, 389), (8, 1001, 1403), (8, 1007, 1401)])
def test_crop_box_maps_to_the_reduced_image_by_ratio(method, ratio, height, width):
    """A linear ramp decoded at 1/r has pixel j = the ramp at full-size position (j + 0.5) r (its block's mean).
    Resampling nearly reproduces a ramp away from the borders (exactly only for a continuous kernel: the
    discrete weights' centroid is off by a fraction of a source pixel), so the crop from the reduced ramp must
    match the crop from the full ramp. Measured: max 0.056 (bilinear, 1/8) and 0.009 (bicubic) on values with
    slopes up to 0.1 per full-size pixel; mapping the box onto the reduced image as if it were a whole image of
    ceil(size / r) pixels (the off-by-one this guards against) is off by 0.10-0.67."""
    def ramp(ys, xs):
        return np.stack(np.broadcast_arrays(0.1 * ys[:, None] + 0.05 * xs[None, :], 0.02 * ys[:, None] + 3.0 + 0 * xs,
                                            0.07 * xs[None, :] + 0 * ys[:, None]), axis=-1)

    full = ramp(np.arange(height) + 0.5, np.arange(width) + 0.5)
    rows, cols = scaled_size(height, ratio), scaled_size(width, ratio)
    reduced = tf.constant(ramp((np.arange(rows) + 0.5) * ratio, (np.arange(cols) + 0.5) * ratio), tf.float32)
    zero = tf.constant(0)
    for box in (T.center_crop_box(height, width, 24, 20),  # 16 px of margin: away from the borders
                T.random_crop_box(height, width, 24, 20, tf.constant(0.45, tf.float64), 0.3, 0.7)):
        got = T.resample_crop(reduced, zero, zero, height, width, *box, 24, 20, method, ratio=tf.constant(ratio))
        want = T.resize_and_crop(tf.constant(full, tf.float32), *box, 24, 20, method)
        np.testing.assert_allclose(got, want, atol=0.06 if method == "bilinear" else 0.01)
        naive = T.resample_crop(reduced, zero, zero, rows, cols, *box, 24, 20, method)
        assert np.abs(naive - want).max() > 0.09
        ref = ref_resize_crop(reduced.numpy(), *(int(v) for v in box), 24, 20, method, ratio, (height, width))
        np.testing.assert_allclose(got, ref, atol=1e-3)  # the NumPy reference of the same mapping


@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
def test_the_needed_window_at_reduced_scale_gives_the_whole_reduced_image_result(photo, method):
    raw = tf.constant(photo)
    for _ in range(20):
        box = T.random_crop_box(1001, 1403, 48, 40, tf.constant(RNG.uniform(0.45, 1.0), tf.float64), RNG.uniform(),
                                RNG.uniform())
        rh, rw, top, left = box
        ratio = T.jpeg_ratio(1001, 1403, JpegScale.for_geometry(48, 40, random_crop_min_fraction=0.45))
        assert int(ratio) == 8  # 1001 >= ceil(8 * 48 / 0.45) = 854, 1403 >= ceil(8 * 40 / 0.45) = 712
        y0, hh = T.source_window(1001, rh, top, 48, method, ratio)
        x0, ww = T.source_window(1403, rw, left, 40, method, ratio)
        window = T.decode_jpeg_scaled(raw, ratio, tf.stack([y0, x0, hh, ww]))
        whole = T.decode_jpeg_scaled(raw, ratio)
        zero = tf.constant(0)
        got = T.resample_crop(window, y0, x0, 1001, 1403, *box, 48, 40, method, ratio=ratio).numpy()
        want = T.resample_crop(whole, zero, zero, 1001, 1403, *box, 48, 40, method, ratio=ratio).numpy()
        np.testing.assert_allclose(got, want, atol=3e-3)


# -- the pipeline ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A folder of two large JPEGs (real pixels) and a small PNG."""
    if not os.path.isdir(fm.DEFAULT_SOURCE):
        pytest.skip(f"needs the Debian package: {fm.INSTALL_HINT}")
    root = tmp_path_factory.mktemp("large") / "ds"
    for name, (h, w), seed in (("a/0.jpg", (1000, 1400), 1), ("a/1.jpg", (1203, 905), 2), ("b/2.png", (60, 50), 3)):
        os.makedirs(root / os.path.dirname(name), exist_ok=True)
        Image.fromarray(fashion_mosaic(h, w, seed=seed)).save(root / name, quality=90)
    return folders.scan(str(root))


def _run(folder, *, decoded=None, channels=3, **kw):
    options = pipeline_options(batch_size=3, model=model_spec(c=channels, h=48, w=40), **kw)
    ds = pipeline.make_dataset(folder.files, folder.labels, folder.n_classes, options, decoded=decoded)
    return np.concatenate([x.numpy() for x, _ in ds]), options


CASES = (dict(training=True, enable_random_crop=True, disable_horizontal_flip=False, preprocess_mode="caffe"),
         dict(training=False, center_crop=True, preprocess_mode="caffe"),
         dict(training=False, center_crop=False, preprocess_mode="caffe"))


@pytest.mark.parametrize("kw", CASES)
def test_pipeline_output_with_and_without_the_reduction(large, kw):
    """Same shapes, close values (caffe: 0..255 minus the mean), the PNG untouched. Both JPEGs decode at 1/8.
    Measured on these images (mean abs / max, in levels of 255): random crop 2.33 / 17.1, center crop 2.03 /
    12.7, plain resize 1.04 / 12.7 (DCT scaling then a mild shrink is a little blurrier at sharp edges than
    one antialiased shrink of the full image); bounds 1.5x / 2x those."""
    reduced, options = _run(large, **kw)
    full, _ = _run(large, reduced_jpeg=False, **kw)
    assert [options.jpeg_scale.ratio(1000, 1400), options.jpeg_scale.ratio(1203, 905)] != [1, 1]
    assert reduced.shape == full.shape == (3, 48, 40, 3)
    diff = np.abs(reduced - full)
    assert diff[:2].mean() < 3.5 and diff[:2].max() < 35
    np.testing.assert_array_equal(reduced[2], full[2])


@pytest.mark.parametrize("channels", [3, 1])
def test_the_cache_keeps_reduced_pixels_and_gives_the_per_epoch_images(large, channels):
    kw = CASES[0]
    options = pipeline_options(batch_size=3, model=model_spec(c=channels, h=48, w=40), **kw)
    cached = D.decode_images(large.files, channels, scale=options.jpeg_scale)
    full = D.decode_images(large.files, channels)
    ratios = [options.jpeg_scale.ratio(1000, 1400), options.jpeg_scale.ratio(1203, 905), 1]
    assert cached.ratios.tolist() == ratios and cached.jpeg.tolist() == [True, True, False]
    assert cached.sizes.tolist() == [[1000, 1400], [1203, 905], [60, 50]]
    assert cached.shapes[:, :2].tolist() == [[scaled_size(s, r) for s in size]
                                             for size, r in zip(cached.sizes.tolist(), ratios)]
    assert cached.nbytes == sum(int(np.prod(s)) for s in cached.shapes) < full.nbytes / 10
    plain, _ = _run(large, channels=channels, **kw)
    from_cache, _ = _run(large, decoded=cached, channels=channels, **kw)
    np.testing.assert_allclose(from_cache, plain, atol=2e-2)
    with pytest.raises(ValueError, match=r"kept at 1/1, the pipeline decodes it at 1/"):
        _run(large, decoded=full, channels=channels, **kw)
