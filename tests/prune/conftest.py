"""Pruning tests: small hand-built Keras models whose groups are known, and free Keras state between tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    import tensorflow as tf

    yield
    tf.keras.backend.clear_session()


def spread_filters(model, seed: int = 0, power: float = 3.0) -> None:
    """Scale every Conv2D/Dense filter (depthwise channel) by u**power, u ~ U(0, 1): norms spread widely,
    as after training with weight decay, so a threshold prunes some and keeps others."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    layers = [layer for layer in model.layers
              if type(layer) in (tf.keras.layers.Conv2D, tf.keras.layers.Dense, tf.keras.layers.DepthwiseConv2D)]
    kernels = [layer.weights[0] for layer in layers]
    pairs = []
    for layer, var, value in zip(layers, kernels, tf.keras.backend.batch_get_value(kernels)):
        axis = 2 if type(layer) is tf.keras.layers.DepthwiseConv2D else value.ndim - 1
        shape = [1] * value.ndim
        shape[axis] = value.shape[axis]
        pairs.append((var, (value * rng.random(shape) ** power).astype(np.float32)))
    tf.keras.backend.batch_set_value(pairs)


def expected_params(model) -> int:
    """Parameters from layer shapes by the textbook formulas (not Keras' count_params)."""
    import tensorflow as tf

    layers = tf.keras.layers
    total = 0
    for layer in model.layers:
        cin = int(layer.input_shape[-1]) if layer.weights else 0
        if type(layer) is layers.Conv2D:
            kh, kw = layer.kernel_size
            total += kh * kw * cin * layer.filters + (layer.filters if layer.use_bias else 0)
        elif type(layer) is layers.DepthwiseConv2D:
            kh, kw = layer.kernel_size
            total += kh * kw * cin + (cin if layer.use_bias else 0)
        elif type(layer) is layers.Dense:
            total += cin * layer.units + (layer.units if layer.use_bias else 0)
        elif isinstance(layer, layers.BatchNormalization):
            total += 4 * cin  # gamma, beta, moving mean, moving variance
        else:
            assert not layer.weights, layer.name
    return total


def toy_model(use_bias: bool = True):
    """Residual Add, depthwise conv, squeeze-excite Multiply, Concatenate, Flatten -> Dense, a softmax head.

    Groups: {stem, body, dw, se_expand} (24 channels), se_reduce (6), branch_a (16), branch_b (8), fc (12);
    predictions is the output (kept whole), input channels are fixed.
    """
    import tensorflow as tf

    layers = tf.keras.layers
    inp = tf.keras.Input((8, 8, 3), name="input_1")
    x = layers.ReLU(name="stem_relu")(layers.Conv2D(24, 3, padding="same", use_bias=use_bias, name="stem")(inp))
    y = layers.Conv2D(24, 3, padding="same", use_bias=use_bias, name="body")(x)
    z = layers.Add(name="add")([x, y])
    dw = layers.DepthwiseConv2D(3, padding="same", use_bias=use_bias, name="dw")(z)
    s = layers.GlobalAveragePooling2D(name="se_squeeze")(z)
    s = layers.Reshape((1, 1, 24), name="se_reshape")(s)
    s = layers.Conv2D(6, 1, activation="relu", name="se_reduce")(s)
    s = layers.Conv2D(24, 1, activation="sigmoid", name="se_expand")(s)
    m = layers.Multiply(name="se_excite")([dw, s])
    a = layers.Conv2D(16, 1, use_bias=use_bias, name="branch_a")(m)
    b = layers.Conv2D(8, 1, use_bias=use_bias, name="branch_b")(m)
    cat = layers.Concatenate(name="concat")([a, b])
    f = layers.Flatten(name="flatten")(layers.MaxPooling2D(4, name="pool")(cat))
    f = layers.Dense(12, activation="relu", name="fc")(f)
    out = layers.Dense(5, activation="softmax", name="predictions")(f)
    return tf.keras.Model(inp, out, name="toy")
