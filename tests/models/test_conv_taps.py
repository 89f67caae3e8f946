"""Convolutions on tiny feature maps computed with the taps that read real input only (models/conv_taps.py):
the same outputs and gradients as TensorFlow's own convolution, the same saved model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.models.conv_taps import sliced_convolutions, used_taps


def _taps_touching_input(size: int, kernel: int, stride: int, padding: str) -> set[int]:
    """Brute force from TensorFlow's documented padding: every (output, tap) pair, kept if it reads a pixel."""
    if padding == "same":
        out = math.ceil(size / stride)
        before = max((out - 1) * stride + kernel - size, 0) // 2
    else:
        out, before = (size - kernel) // stride + 1, 0
    return {t for i in range(out) for t in range(kernel) if 0 <= i * stride - before + t < size}


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_used_taps_are_exactly_the_taps_that_read_input(padding):
    for size in range(1, 9):
        for kernel in (1, 2, 3, 5, 7):
            for stride in (1, 2, 3):
                if padding == "valid" and size < kernel:
                    continue
                touching = _taps_touching_input(size, kernel, stride, padding)
                got = used_taps(size, kernel, stride, padding)
                if got is None:
                    continue  # nothing to drop, or the slice would need padding: the layer is left alone
                first, last = got
                assert set(range(first, last + 1)) == touching, (size, kernel, stride, padding)
                assert len(touching) < kernel


def test_the_cases_resnet_hits_are_reduced():
    assert used_taps(1, 3, 1, "same") == (1, 1)  # a 3x3 convolution of a 1x1 map: its centre only
    assert used_taps(2, 3, 2, "same") == (0, 1)  # stride 2 from 2x2 to 1x1: the top-left 2x2 taps
    assert used_taps(2, 3, 1, "same") is None  # every tap reads input somewhere
    assert used_taps(32, 7, 2, "same") is None


def _grads(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.cos(y))  # not linear: the output's values matter
    return (y, *tape.gradient(loss, [x, layer.kernel] + ([layer.bias] if layer.use_bias else [])))


@pytest.mark.parametrize("hw,kernel,stride,padding", [((1, 1), 3, 1, "same"), ((2, 2), 3, 2, "same"),
                                                      ((1, 1), 5, 1, "same"), ((1, 3), 3, 1, "same"),
                                                      ((3, 1), 3, 2, "same"), ((2, 2), 3, 1, "same"),
                                                      ((1, 2), 3, 2, "same")])
def test_outputs_and_gradients_equal_tensorflows_convolution(hw, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(4, *hw, 16)), tf.float32)
    layer = tf.keras.layers.Conv2D(8, kernel, strides=stride, padding=padding, use_bias=True)
    layer.build(x.shape)
    layer.bias.assign(rng.normal(size=8))
    plain = _grads(layer, x)
    with sliced_convolutions():
        sliced = _grads(layer, x)
    for a, b in zip(plain, sliced):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5)
    kernel_grad = sliced[2].numpy()
    if hw == (1, 1):  # the taps that only read padding get exactly zero gradient, as without the slice
        c = kernel // 2
        mask = np.ones(kernel_grad.shape[:2], bool)
        mask[c, c] = False
        assert not kernel_grad[mask].any()


def test_a_resnet_training_step_is_the_same_and_the_saved_layers_unchanged(tmp_path):
    from kestrel_trainer.models.registry import create_model
    from kestrel_trainer.spec import parse_spec_text

    spec = parse_spec_text('model_config { arch: "resnet" n_layers: 10 input_image_size: "1,32,32" '
                           'use_batch_norm: true use_pooling: true }', source="t").model
    model = create_model(spec, 10)
    x = tf.constant(np.random.default_rng(1).random((8, 32, 32, 1)), tf.float32)
    y = tf.one_hot(np.arange(8) % 10, 10)

    def step():
        with tf.GradientTape() as tape:
            loss = tf.keras.losses.categorical_crossentropy(y, model(x, training=True))
        return loss, tape.gradient(loss, model.trainable_variables)

    def small_kernels() -> int:  # Conv2D ops in the traced graph whose filter is smaller than 3x3
        graph = tf.function(lambda: model(x, training=True)).get_concrete_function().graph
        return sum(op.type == "Conv2D" and op.inputs[1].shape[0] * op.inputs[1].shape[1] < 9
                   for op in graph.get_operations())

    loss, grads = step()
    plain_small = small_kernels()
    with sliced_convolutions():
        sliced_loss, sliced_grads = step()
        assert small_kernels() == plain_small + 2  # ResNet-10 stage 4: strided 3x3 (2x2 -> 1x1), 3x3 on 1x1
    np.testing.assert_allclose(sliced_loss.numpy(), loss.numpy(), rtol=1e-5)
    for g, s in zip(grads, sliced_grads):
        np.testing.assert_allclose(s.numpy(), g.numpy(), rtol=1e-4, atol=1e-5)
    from keras.src.layers.convolutional.base_conv import Conv

    assert Conv.convolution_op.__name__ == "convolution_op" and Conv.convolution_op.__module__.startswith("keras")
    assert all(type(layer).__module__.startswith("keras") for layer in model.layers)  # Keras' own layers, saved as such
