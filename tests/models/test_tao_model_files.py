"""The original's model files: channels-first HDF5 and its AES-CTR `.tlt`, loaded with the same outputs.

The channels-first model is built here with the original's layer names and saved the original's way.
TensorFlow cannot run it on a CPU, so the reference is the same network built channels-last by hand
with the same weights: convolution kernels copy as they are, and the Dense rows behind a (C, H, W)
flatten are reordered with an index map computed here, not by the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.errors import ModelFileError
from kestrel_trainer.model_io import tao_crypto
from kestrel_trainer.model_io.files import layer_weights, load_model, save_model

KEY = "nvidia_tlt"
L = tf.keras.layers


def resnet_like(data_format: str, flatten_format: str) -> tf.keras.Model:
    """conv1/bn_conv1/pool, one projection block (the original's names), flatten, predictions."""
    axis = 1 if data_format == "channels_first" else -1
    shape = (3, 24, 24) if data_format == "channels_first" else (24, 24, 3)
    conv = dict(data_format=data_format, padding="same")
    inputs = L.Input(shape, name="input_1")
    x = L.Conv2D(8, 5, strides=2, name="conv1", **conv)(inputs)
    x = L.BatchNormalization(axis=axis, name="bn_conv1")(x)
    x = L.Activation("relu", name="activation_1")(x)
    x = L.MaxPooling2D(2, data_format=data_format, name="max_pooling2d_1")(x)
    y = L.Conv2D(12, 3, strides=2, name="block_1a_conv_1", **conv)(x)
    y = L.BatchNormalization(axis=axis, name="block_1a_bn_1")(y)
    y = L.Activation("relu", name="block_1a_relu_1")(y)
    y = L.Conv2D(12, 3, name="block_1a_conv_2", **conv)(y)
    y = L.BatchNormalization(axis=axis, name="block_1a_bn_2")(y)
    s = L.Conv2D(12, 1, strides=2, name="block_1a_conv_shortcut", **conv)(x)
    s = L.BatchNormalization(axis=axis, name="block_1a_bn_shortcut")(s)
    x = L.Activation("relu", name="block_1a_relu")(L.Add(name="add_1")([y, s]))
    x = L.Flatten(data_format=flatten_format, name="flatten")(x)
    x = L.Dropout(0.3, name="dropout_1")(x)
    outputs = L.Dense(5, activation="softmax", name="predictions")(x)
    return tf.keras.Model(inputs, outputs, name="resnet")


def _randomize(model: tf.keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta), rng.normal(0, 0.1, mean),
                               rng.uniform(0.5, 2.0, var)])
        elif layer.weights:
            layer.set_weights([rng.normal(0, 0.3, w.shape) for w in layer.get_weights()])


def _reference(nchw: tf.keras.Model, flatten_format: str) -> tf.keras.Model:
    """The same network and weights, channels-last, assembled by hand."""
    ref = resnet_like("channels_last", "channels_last")
    for layer in ref.layers:
        if layer.weights:
            layer.set_weights(nchw.get_layer(layer.name).get_weights())
    if flatten_format == "channels_last":  # the NCHW model flattened (C, H, W); ours flattens (H, W, C)
        kernel, bias = nchw.get_layer("predictions").get_weights()
        c, h, w = nchw.get_layer("flatten").input_shape[1:]
        rows = [np.ravel_multi_index((ci, hi, wi), (c, h, w)) for hi in range(h) for wi in range(w) for ci in range(c)]
        ref.get_layer("predictions").set_weights([kernel[rows], bias])
    return ref


@pytest.fixture(scope="module", params=["channels_last", "channels_first"], ids=["chw_flatten", "hwc_flatten"])
def original(request, tmp_path_factory):
    """(folder, NCHW model, NHWC reference, images NHWC) with the model saved as the original saves it."""
    folder = tmp_path_factory.mktemp("orig")
    nchw = resnet_like("channels_first", request.param)
    _randomize(nchw)
    nchw.compile(tf.keras.optimizers.legacy.SGD(0.01, momentum=0.9), "categorical_crossentropy")
    nchw.save(folder / "resnet_080.hdf5", save_format="h5")
    plain = (folder / "resnet_080.hdf5").read_bytes()
    (folder / "resnet_080.tlt").write_bytes(tao_crypto.encrypt_stream(plain, KEY))
    images = np.random.default_rng(1).uniform(-2, 2, (4, 24, 24, 3)).astype(np.float32)
    return folder, nchw, _reference(nchw, request.param), images


@pytest.mark.parametrize("name,key", [("resnet_080.hdf5", None), ("resnet_080.tlt", KEY)])
def test_the_originals_channels_first_model_gives_the_same_predictions(original, name, key):
    folder, _, reference, images = original
    model = load_model(folder / name, key)
    assert model.input_shape == (None, 24, 24, 3)
    assert [layer.name for layer in model.layers] == [layer.name for layer in reference.layers]
    expected = reference(images, training=False).numpy()
    np.testing.assert_allclose(model(images, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert expected.std() > 0.01  # the outputs differ per image: a wrong row order could not pass


def test_pretrained_weights_from_the_originals_file_are_channels_last(original):
    folder, _, reference, _ = original
    weights = layer_weights(folder / "resnet_080.tlt", KEY)
    np.testing.assert_allclose(weights["predictions"][0], reference.get_layer("predictions").get_weights()[0])
    assert weights["conv1"][0].shape == (5, 5, 3, 8)


def test_wrong_key_on_the_originals_tlt_names_its_format(original):
    folder = original[0]
    with pytest.raises(ModelFileError, match="wrong key") as err:
        load_model(folder / "resnet_080.tlt", "not-the-key")
    assert "the original's .tlt format has no authentication" in err.value.message
    assert str(folder / "resnet_080.tlt") in err.value.message
    with pytest.raises(ModelFileError, match="give its key"):
        load_model(folder / "resnet_080.tlt", None)


def test_format_tao_writes_the_originals_tlt_and_it_reads_back(original, tmp_path):
    _, _, reference, images = original
    path = save_model(reference, tmp_path / "resnet_001.tlt", KEY, format="tao")
    plain = tao_crypto.decrypt_stream(path.read_bytes(), KEY)  # the original's recipe, done by hand here
    assert plain.startswith(b"\x89HDF\r\n\x1a\n")
    assert b'"data_format": "channels_first"' in plain  # the original's layout
    again = load_model(path, KEY)
    np.testing.assert_allclose(again(images, training=False).numpy(), reference(images, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_our_own_tlt_with_a_wrong_key_names_its_format(original, tmp_path):
    _, _, reference, _ = original
    path = save_model(reference, tmp_path / "m.tlt", KEY)
    with pytest.raises(ModelFileError, match=f"wrong key or corrupt file: {path} \\(Kestrel .tlt"):
        load_model(path, "nope")
