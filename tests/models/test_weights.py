"""Pretrained weights by layer name, from our files and plain Keras HDF5; pruned models keep their shapes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.errors import ModelFileError
from kestrel_trainer.model_io.files import save_model
from kestrel_trainer.models.registry import create_model
from kestrel_trainer.models.weights import build_with_pretrained, load_pretrained_weights

from .specs import make_spec

KEY = "k3y"


def _same(a, b):
    return all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.weights, b.weights))


@pytest.mark.parametrize("key", [KEY, None])
def test_loads_by_name_and_skips_a_head_with_another_class_count(tmp_path, key, caplog):
    spec = make_spec("resnet", 10, size=32)
    source = create_model(spec, 10)
    path = save_model(source, tmp_path / "pre.tlt", key)
    target = create_model(spec, 4)
    with caplog.at_level("INFO"):
        report = load_pretrained_weights(target, path, key)
    assert "predictions" in report.skipped[0] and len(report.skipped) == 1
    assert "skipping layer predictions" in caplog.text
    for layer in target.layers:
        if layer.weights and layer.name != "predictions":
            assert _same(layer, source.get_layer(layer.name)), layer.name
    assert not _same(target.get_layer("predictions"), source.get_layer("predictions"))


def test_loads_a_keras_weights_only_hdf5(tmp_path):
    source = create_model(make_spec("mobilenet_v1", size=32), 5)
    path = tmp_path / "weights.h5"
    source.save_weights(str(path), save_format="h5")
    target = create_model(make_spec("mobilenet_v1", size=32), 5)
    report = load_pretrained_weights(target, path)
    assert not report.skipped and not report.missing
    assert all(_same(target.get_layer(n), source.get_layer(n)) for n in report.loaded)


def test_rgb_weights_into_a_grayscale_model_skip_only_the_first_conv(tmp_path):
    path = save_model(create_model(make_spec("resnet", 10, size=32), 3), tmp_path / "rgb.tlt", KEY)
    report = load_pretrained_weights(create_model(make_spec("resnet", 10, channels=1, size=32), 3), path, KEY)
    assert [s.split(":")[0] for s in report.skipped] == ["conv1"]


def test_wrong_key_for_pretrained_is_the_clear_error(tmp_path):
    path = save_model(create_model(make_spec("resnet", 10, size=32), 3), tmp_path / "m.tlt", KEY)
    with pytest.raises(ModelFileError, match="wrong key or corrupt file"):
        build_with_pretrained(make_spec("resnet", 10, size=32), 3, path, "nope")


def _pruned_resnet10(n_classes: int) -> tf.keras.Model:
    """What the pruner produces: the same graph with fewer filters in some layers."""
    full = create_model(make_spec("resnet", 10, size=32), n_classes)
    config = full.get_config()
    for layer in config["layers"]:
        if layer["config"]["name"] in ("block_3a_conv_1", "block_4a_conv_1"):
            layer["config"]["filters"] //= 2
    return tf.keras.Model.from_config(config)


@pytest.mark.parametrize("n_classes", [6, 3])
def test_pruned_pretrained_model_is_trained_with_its_own_architecture(tmp_path, n_classes):
    pruned = _pruned_resnet10(6)
    path = save_model(pruned, tmp_path / "pruned.tlt", KEY)
    spec = make_spec("resnet", 10, size=32, freeze_blocks=(0,))
    model, report = build_with_pretrained(spec, n_classes, path, KEY)
    assert report.rebuilt_from_file
    assert model.get_layer("block_3a_conv_1").filters == 128  # the pruned width, not the spec's 256
    assert model.output_shape == (None, n_classes)
    assert _same(model.get_layer("block_4a_conv_1"), pruned.get_layer("block_4a_conv_1"))
    assert not model.get_layer("conv1").trainable  # the spec's freeze_blocks still applies
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.train_on_batch(np.zeros((2, 32, 32, 3), np.float32), np.array([0, 1]))


def test_unpruned_pretrained_model_goes_through_by_name_loading(tmp_path):
    path = save_model(create_model(make_spec("resnet", 10, size=32), 6), tmp_path / "full.tlt", KEY)
    model, report = build_with_pretrained(make_spec("resnet", 10, size=32), 6, path, KEY)
    assert not report.rebuilt_from_file and not report.skipped and not report.missing


def test_the_originals_alexnet_head_loads_by_name(tmp_path):
    """The original's alexnet (templates/alexnet.py) names its softmax `head_fc8` and has no pool after conv5,
    so its fc6 reads conv5's map: a file with those names and shapes loads whole into ours."""
    spec = make_spec("alexnet", size=32, retain_head=True, use_batch_norm=False, use_bias=True)
    source = create_model(spec, 5)
    source.get_layer("predictions")._name = "head_fc8"
    path = tmp_path / "theirs.h5"
    source.save_weights(str(path), save_format="h5")
    target = create_model(spec, 5)
    report = load_pretrained_weights(target, path)
    assert not report.skipped and not report.missing and not report.unused
    assert _same(target.get_layer("predictions"), source.get_layer("head_fc8"))
    assert _same(target.get_layer("fc6"), source.get_layer("fc6"))
