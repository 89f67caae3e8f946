"""The tf.data pipeline end to end: values, shapes, sharding across ranks, determinism."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from kestrel_trainer.data import folders, pipeline
from kestrel_trainer.data.sharding import steps_per_epoch
from tests.data.helpers import make_folder, model_spec, pipeline_options, train_spec
from tests.data.numpy_refs import ref_center_box, ref_preprocess, ref_resize_crop


@pytest.fixture(scope="module")
def ds13(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("p") / "ds")
    make_folder(root, {"a": 5, "b": 4, "c": 4}, size=(9, 12))
    return folders.scan(root)


def _paths(batches):
    return [p.decode() for b in batches for p in b[2].numpy()]


def _batches(folder, *, training=True, batch_size=4, rank=0, size=1, initial_epoch=0, **kw):
    """Every batch (images, labels, paths); kw: spec fields (n_epochs: the last epoch + 1), model, center_crop."""
    options = pipeline_options(training=training, batch_size=batch_size, with_paths=True, **kw)
    return list(pipeline.make_dataset(folder.files, folder.labels, folder.n_classes, options, rank=rank, size=size,
                                      initial_epoch=initial_epoch))


def test_eval_values_match_numpy_reference_and_keep_the_partial_batch(ds13):
    batches = _batches(ds13, training=False, batch_size=5, center_crop=True)
    assert [len(b[0]) for b in batches] == [5, 5, 3]
    assert _paths(batches) == list(ds13.files)  # eval: file order, nothing dropped
    x, y = batches[1][0].numpy(), batches[1][1].numpy()
    assert x.dtype == np.float32 and x.shape == (5, 8, 8, 3) and y.shape == (5, 3)
    for i in range(5):
        k = 5 + i
        img = np.asarray(Image.open(ds13.files[k]).convert("RGB"))
        box = ref_center_box(img.shape[0], img.shape[1], 8, 8)
        want = ref_preprocess(ref_resize_crop(img, *box, 8, 8, "bilinear"), "caffe")
        np.testing.assert_allclose(x[i], want, atol=2e-3)
        np.testing.assert_array_equal(y[i], np.eye(3)[ds13.labels[k]])


def test_grey_model_and_bicubic_resize(ds13):
    ms = model_spec(c=1, h=8, w=8, method="bicubic")
    x = _batches(ds13, training=False, batch_size=13, model=ms, preprocess_mode="tf")[0][0].numpy()
    img = np.asarray(Image.open(ds13.files[0]).convert("RGB")).astype(np.float64)
    grey = np.round(img @ [0.299, 0.587, 0.114])[..., None]
    np.testing.assert_allclose(x[0], ref_preprocess(ref_resize_crop(grey, 8, 8, 0, 0, 8, 8, "bicubic"), "tf"),
                               atol=1e-4)


@pytest.mark.parametrize("n_files,size,batch", [(13, 2, 4), (13, 3, 2), (12, 3, 4), (13, 4, 3), (13, 1, 5)])
def test_ranks_read_disjoint_shards_covering_the_set_in_equal_steps(ds13, n_files, size, batch):
    files, labels = ds13.files[:n_files], ds13.labels[:n_files]
    sub = folders.ImageFolder(ds13.root, ds13.classes, files, labels)
    steps = steps_per_epoch(n_files, batch, size)
    per_rank = [_batches(sub, batch_size=batch, rank=r, size=size, n_epochs=2) for r in range(size)]
    for epoch in range(2):
        seen = []
        for r in range(size):
            batches = per_rank[r][epoch * steps:(epoch + 1) * steps]
            assert len(per_rank[r]) == 2 * steps
            assert all(1 <= len(b[0]) <= batch for b in batches)
            seen.append(_paths(batches))
        union = [p for s in seen for p in s]
        assert sorted(union) == sorted(files)  # exactly the set: disjoint and complete
        for r in range(size):
            assert set(seen[r]) == {files[i] for i in range(r, n_files, size)}


def test_shuffle_is_seeded_reshuffled_each_epoch_and_resumable(ds13):
    kw = dict(enable_random_crop=True, disable_horizontal_flip=False, enable_color_augmentation=True,
              mixup_alpha=0.3)
    run = _batches(ds13, n_epochs=3, **kw)
    again = _batches(ds13, n_epochs=3, **kw)
    steps = steps_per_epoch(13, 4, 1)
    orders = [_paths(run[e * steps:(e + 1) * steps]) for e in range(3)]
    assert orders[0] != orders[1] != orders[2] and sorted(orders[0]) == sorted(ds13.files)
    for a, b in zip(run, again, strict=True):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    resumed = _batches(ds13, initial_epoch=1, n_epochs=3, **kw)
    for a, b in zip(run[steps:], resumed, strict=True):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    other_seed = _batches(ds13, n_epochs=1, random_seed=43, **kw)
    assert _paths(other_seed) != orders[0]


def test_training_flip_and_crop_produce_varied_views_of_each_image(ds13):
    one = folders.ImageFolder(ds13.root, ds13.classes, (ds13.files[0],) * 8 + (ds13.files[6],),
                              (0,) * 8 + (1,))
    plain = _batches(one, training=False, batch_size=9)[0][0].numpy()[0]
    flips = _batches(one, batch_size=9, disable_horizontal_flip=False)[0]
    kinds = Counter()
    for x, p in zip(flips[0].numpy(), _paths([flips]), strict=True):
        if p != ds13.files[0]:
            continue
        if np.allclose(x, plain, atol=1e-4):
            kinds["same"] += 1
        elif np.allclose(x, plain[:, ::-1], atol=1e-4):
            kinds["mirrored"] += 1
    assert kinds["same"] + kinds["mirrored"] == 8 and kinds["same"] and kinds["mirrored"]
    crops = _batches(one, batch_size=9, enable_random_crop=True)[0][0].numpy()[:8]
    # different windows (a 9x12 image has only ~100 possible crops, so two of 8 draws may coincide)
    assert len({c.tobytes() for c in crops}) >= 6


def test_mixup_labels_sum_to_one_and_mix_two_classes_at_most(ds13):
    batches = _batches(ds13, batch_size=5, mixup_alpha=0.4, n_epochs=2)
    for b in batches:
        y = b[1].numpy()
        np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-6)
        assert np.all((y > 0).sum(axis=1) <= 2) and np.all(y.max(axis=1) >= 0.5 - 1e-6)
    assert any(np.any((b[1].numpy() > 0).sum(axis=1) == 2) for b in batches)


def test_static_shapes_for_keras(ds13):
    ds = pipeline.make_dataset(ds13.files, ds13.labels, 3, pipeline_options(training=True, batch_size=4))
    assert ds.element_spec[0].shape.as_list() == [None, 8, 8, 3]
    assert ds.element_spec[1].shape.as_list() == [None, 3]
    assert int(ds.cardinality()) == steps_per_epoch(13, 4)
    assert os.path.exists(ds13.files[0])


def test_jpeg_and_bmp_files_go_through_the_same_geometry(tmp_path):
    import tensorflow as tf

    from tests.data.numpy_refs import ref_center_box, ref_preprocess, ref_resize_crop

    root = str(tmp_path / "ds")
    make_folder(root, {"a": 2}, size=(30, 41), ext=".jpg")
    make_folder(root, {"b": 2}, size=(23, 17), ext=".bmp", seed=1)
    ds = folders.scan(root)
    x = _batches(ds, training=False, batch_size=4, center_crop=True)[0][0].numpy()
    for i, path in enumerate(ds.files):
        img = tf.io.decode_image(tf.io.read_file(path), channels=3).numpy()  # TF's own decoder as reference
        box = ref_center_box(img.shape[0], img.shape[1], 8, 8)
        np.testing.assert_allclose(x[i], ref_preprocess(ref_resize_crop(img, *box, 8, 8, "bilinear"), "caffe"),
                                   atol=2e-3)


def test_options_follow_the_spec_and_evaluation_refuses_augmentations():
    from dataclasses import replace

    from kestrel_trainer.data.pipeline import PipelineOptions

    spec = train_spec(enable_random_crop=True, enable_color_augmentation=True, disable_horizontal_flip=False,
                      mixup_alpha=0.2, n_epochs=5, random_seed=9, n_workers=3, preprocess_mode="torch",
                      torch_std="per_channel")
    rgb = PipelineOptions.for_training(model_spec(c=3, h=8, w=6), spec, 8)
    assert (rgb.height, rgb.width, rgb.channels, rgb.batch_size) == (8, 6, 3, 8)
    assert (rgb.random_crop, rgb.color, rgb.flip, rgb.mixup_alpha) == (True, True, True, 0.2)
    assert (rgb.n_epochs, rgb.seed, rgb.n_workers, rgb.preprocess_mode) == (5, 9, 3, "torch_per_channel")
    assert PipelineOptions.for_training(model_spec(c=1), spec, 8).color is False  # colour augmentation: RGB only
    evaluation = PipelineOptions.for_evaluation(model_spec(), spec, 4)
    assert not (evaluation.random_crop or evaluation.color or evaluation.flip or evaluation.mixup_alpha)
    assert evaluation.center_crop is False and evaluation.seed == 9
    assert PipelineOptions.for_evaluation(model_spec(), replace(spec, enable_center_crop=True), 4).center_crop
    with pytest.raises(ValueError, match="training augmentations"):
        replace(evaluation, flip=True)
    with pytest.raises(ValueError, match="center crop is for evaluation"):
        replace(rgb, center_crop=True)
