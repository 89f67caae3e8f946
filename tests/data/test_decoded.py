"""The in-memory cache of decoded training images, and the resampler that reads it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.data import check, folders, pipeline, sharding
from kestrel_trainer.data import decoded as D
from kestrel_trainer.data import transforms as T
from tests.data.helpers import make_folder, model_spec, pipeline_options
from tests.data.numpy_refs import ref_preprocess, ref_resize_crop

RNG = np.random.default_rng(11)


def _images(folder, channels=3, *, rank=0, size=1, decoded=None, **kw):
    """All batches' images of one pass, as one array; kw: training, spec fields, center_crop."""
    options = pipeline_options(batch_size=4, model=model_spec(c=channels, h=8, w=8), **kw)
    ds = pipeline.make_dataset(folder.files, folder.labels, folder.n_classes, options, rank=rank, size=size,
                               decoded=decoded)
    return np.concatenate([x.numpy() for x, _ in ds])


@pytest.mark.parametrize("ext", [".png", ".jpg"])
@pytest.mark.parametrize("channels", [3, 1])
def test_cached_epochs_equal_decoding_every_epoch(tmp_path, ext, channels):
    root = str(tmp_path / "ds")
    make_folder(root, {"a": 5, "b": 4}, size=(21, 30), ext=ext)
    folder = folders.scan(root)
    decoded = D.decode_images(folder.files, channels)
    assert len(decoded) == 9 and decoded.nbytes == 9 * 21 * 30 * channels
    for kw in (dict(training=True, enable_random_crop=True, n_epochs=2, preprocess_mode="caffe"),
               dict(training=True, enable_random_crop=True, n_epochs=1, preprocess_mode="torch", random_seed=5),
               dict(training=False, center_crop=True, preprocess_mode="tf"),
               dict(training=True, enable_random_crop=True, enable_color_augmentation=True, preprocess_mode="caffe")):
        plain = _images(folder, channels, **kw)
        cached = _images(folder, channels, decoded=decoded, **kw)
        # JPEGs: the uncached path decodes only the crop's window, which libjpeg may round differently
        np.testing.assert_allclose(cached, plain, atol=1e-4 if ext == ".png" else 2e-2)


def test_each_rank_caches_its_own_shard(tmp_path):
    root = str(tmp_path / "ds")
    make_folder(root, {"a": 4, "b": 3}, size=(12, 10))
    folder = folders.scan(root)
    decoded = D.decode_shard(folder.files, 1, 2, 3, "on", log=lambda _: None)
    assert len(decoded) == sharding.shard_size(len(folder.files), 1, 2) == 3
    kw = dict(training=True, enable_random_crop=True, rank=1, size=2)
    np.testing.assert_allclose(_images(folder, decoded=decoded, **kw), _images(folder, **kw), atol=1e-4)
    with pytest.raises(ValueError, match="shard"):
        _images(folder, decoded=decoded, training=True, rank=0, size=2)  # rank 0's shard has 4 images


def test_budget_exceeded_falls_back_to_decoding_and_says_so(tmp_path):
    root = str(tmp_path / "ds")
    make_folder(root, {"a": 3, "b": 3}, size=(12, 10))
    files = folders.scan(root).files
    said = []
    assert D.decode_images(files, 3, max_bytes=12 * 10 * 3 * 4, log=said.append) is None
    assert "cache budget" in said[0] and "decoding them every epoch" in said[0]
    assert len(D.decode_images(files, 3, max_bytes=12 * 10 * 3 * 6)) == 6
    with open(files[-1], "wb") as fh:  # a bad file after the budget ran out is still found
        fh.write(b"not an image")
    failed, decoded = D.decode_pass(files, 3, np.arange(6), max_bytes=12 * 10 * 3 * 2)
    assert failed == [5] and decoded is None
    assert D.decode_shard(files, 0, 1, 3, "off") is None
    assert D.cache_budget("on") is None and D.cache_budget("off") == 0
    with pytest.raises(ValueError, match="auto, on, off"):
        D.cache_budget("always")


def test_auto_budget_respects_a_pod_memory_limit(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 33554432 kB\nMemAvailable: 16777216 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(str(4 * 2**30))
    (cgroup / "memory.current").write_text(str(3 * 2**30))
    assert D.available_memory(str(meminfo), str(cgroup)) == 2**30  # the pod's room, not the node's 16 GiB
    (cgroup / "memory.max").write_text("max")
    assert D.available_memory(str(meminfo), str(cgroup)) == 16 * 2**30


def test_a_file_that_breaks_after_the_check_is_a_clear_error(tmp_path):
    root = str(tmp_path / "ds")
    paths = make_folder(root, {"a": 2, "b": 2}, size=(12, 10))
    with open(paths[1], "wb") as fh:
        fh.write(b"not an image")
    with pytest.raises(D.DataError, match="dataset check"):
        D.decode_images(folders.scan(root).files, 3)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("box", [(20, 26, 3, 5), (12, 10, 1, 2)])  # enlarge, shrink (antialiased)
def test_flip_and_preprocessing_folded_into_resampling_match_doing_them_after(mode, method, box):
    img = RNG.integers(0, 256, size=(15, 18, 3), dtype=np.uint8)
    rh, rw, top, left = box
    want = ref_preprocess(ref_resize_crop(img, rh, rw, top, left, 8, 8, method)[:, ::-1], mode)
    zero = tf.constant(0)
    got = T.resample_crop(tf.constant(img), zero, zero, 15, 18, rh, rw, top, left, 8, 8, method,
                          flip=tf.constant(True), mode=mode).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4 * (255 if mode == "caffe" else 1) * 2)
    transposed = tf.transpose(tf.constant(img), [1, 2, 0])  # the cache's [W, C, H] layout
    same = T.resample_crop(transposed, zero, zero, 15, 18, rh, rw, top, left, 8, 8, method,
                           flip=tf.constant(True), mode=mode, transposed=True).numpy()
    np.testing.assert_array_equal(same, got)


def test_one_decoding_pass_checks_every_file_and_caches_the_ranks_shard(tmp_path):
    root = str(tmp_path / "ds")
    make_folder(root, {"a": 4, "b": 3}, size=(12, 10))
    folder = folders.scan(root)
    files, labels, skipped, decoded = check.exclude_bad_images_and_cache(
        folder.files, folder.labels, skip_bad_images=False, channels=3, rank=1, size=2, cache="on",
        info=lambda _: None)
    assert (files, labels, skipped) == (list(folder.files), list(folder.labels), 0)
    want = D.decode_shard(folder.files, 1, 2, 3, "on", log=lambda _: None)
    np.testing.assert_array_equal(decoded.pixels.numpy(), want.pixels.numpy())
    np.testing.assert_array_equal(decoded.shapes, want.shapes)
    *_, nothing = check.exclude_bad_images_and_cache(folder.files, folder.labels, skip_bad_images=False, channels=3,
                                                     cache="off")
    assert nothing is None


def test_skipping_a_bad_file_moves_the_shard_and_the_cache_follows(tmp_path):
    root = str(tmp_path / "ds")
    paths = make_folder(root, {"a": 4, "b": 3}, size=(12, 10))
    folder = folders.scan(root)
    with open(folder.files[0], "wb") as fh:
        fh.write(b"\x89PNG broken")
    with pytest.raises(D.DataError, match="cannot be decoded"):
        check.exclude_bad_images_and_cache(folder.files, folder.labels, skip_bad_images=False, channels=3)
    said = []
    files, labels, skipped, decoded = check.exclude_bad_images_and_cache(
        folder.files, folder.labels, skip_bad_images=True, channels=3, rank=0, size=2, cache="on",
        log=said.append, info=lambda _: None)
    assert skipped == 1 and files == list(folder.files[1:]) and len(paths) == 7 and "skipping 1" in said[0]
    want = D.decode_shard(files, 0, 2, 3, "on", log=lambda _: None)  # rank 0 now reads files 1, 3, 5
    np.testing.assert_array_equal(decoded.pixels.numpy(), want.pixels.numpy())
    kw = dict(training=True, enable_random_crop=True, rank=0, size=2)
    kept = folders.ImageFolder(root=root, classes=folder.classes, files=tuple(files), labels=tuple(labels))
    np.testing.assert_allclose(_images(kept, decoded=decoded, **kw), _images(kept, **kw), atol=1e-4)


def test_with_a_gather_each_rank_decodes_only_its_shard_and_all_drop_the_same_files(tmp_path, monkeypatch):
    root = str(tmp_path / "ds")
    make_folder(root, {"a": 4, "b": 4}, size=(12, 10))
    folder = folders.scan(root)
    with open(folder.files[5], "wb") as fh:  # rank 1's file (5 = 1 + 2 * 2)
        fh.write(b"not an image")
    decoded_paths: list[str] = []
    real_pass = D.decode_pass

    def spy(paths, *args, **kwargs):
        decoded_paths.extend(paths)
        return real_pass(paths, *args, **kwargs)

    monkeypatch.setattr(D, "decode_pass", spy)
    failed_by_rank: dict[int, list[int]] = {}

    def run(rank: int, others: list[int]):
        def gather(mine: list[int]) -> list[int]:
            failed_by_rank[rank] = mine
            return mine + others
        return check.exclude_bad_images_and_cache(
            folder.files, folder.labels, skip_bad_images=True, channels=3, rank=rank, size=2, cache="on",
            gather=gather, log=lambda _: None, info=lambda _: None)

    one = run(1, [])
    assert failed_by_rank[1] == [5]
    assert set(decoded_paths[:4]) == {folder.files[i] for i in (1, 3, 5, 7)}  # the check: its shard only
    zero = run(0, failed_by_rank[1])
    assert failed_by_rank[0] == []  # rank 0 never opened the broken file, yet drops it like rank 1
    assert zero[0] == one[0] == [f for i, f in enumerate(folder.files) if i != 5] and zero[2] == one[2] == 1
    for rank, (files, _, _, decoded) in ((0, zero), (1, one)):
        want = D.decode_shard(files, rank, 2, 3, "on", log=lambda _: None)
        np.testing.assert_array_equal(decoded.pixels.numpy(), want.pixels.numpy())

