"""Convolutions on tiny feature maps without the kernel taps that only ever read padding (training speed).

A 3x3 "same" convolution of a 1x1 feature map reads padding with 8 of its 9 taps: it equals a 1x1 convolution
with the kernel's centre. TensorFlow 2.15's CPU kernels do not know that, and their backward pass on such
maps is pathological on some CPUs: on the 2-core development machine (AVX2, no AVX-512) the input gradient of
one 3x3 convolution of a 128 x 1 x 1 x 512 batch took ~900 ms, against ~2 ms for the same maths as a 1x1
convolution; ResNet-18 at 32x32 (its last stage is 1x1) trained at 35 img/s instead of ~1,000.

`used_taps` is the rule (pure arithmetic, per axis); `sliced_convolutions()` is a context manager that makes
Keras' Conv2D compute with the used taps only (a slice of the same kernel variable, so the gradient of the
unused taps is exactly zero, as it is without the slice, and the saved model is unchanged: same layers, same
kernel shapes, TAO-compatible). Training wraps `fit` in it; everything else (inference, export) traces the
plain convolutions. Only stride/padding cases whose sliced form is an exact VALID convolution are changed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Optional

import tensorflow as tf


def used_taps(size: int, kernel: int, stride: int, padding: str) -> Optional[tuple[int, int]]:
    """The kernel taps [first, last] that read real input along one axis of `size` pixels, when dropping the
    others gives the same output as an unpadded (VALID) convolution; None when all taps are used or the
    slice would need padding of its own. padding: "same" or "valid" (TensorFlow's definitions)."""
    if padding == "same":
        out = math.ceil(size / stride)
        before = max((out - 1) * stride + kernel - size, 0) // 2
    elif padding == "valid":
        out = (size - kernel) // stride + 1
        before = 0
    else:
        return None
    if out < 1:
        return None
    # output i reads input i * stride - before + t for tap t in [0, kernel)
    first = max(0, before - (out - 1) * stride)
    last = min(kernel - 1, size - 1 + before)
    if (first, last) == (0, kernel - 1) or before != first or (size - (last - first + 1)) // stride + 1 != out:
        return None
    return first, last


def valid_window(sizes: tuple[int, int], kernel: tuple[int, int], strides: tuple[int, int],
                 padding: str) -> Optional[list[tuple[int, int]]]:
    """Per axis, the taps [first, last] to keep so that a VALID convolution of that kernel slice equals the
    layer's own; None when nothing can be dropped or an axis still needs its padding."""
    window = []
    for size, k, stride in zip(sizes, kernel, strides):
        taps = used_taps(size, k, stride, padding)
        if taps is None:
            if padding == "same" and k > 1:
                return None  # every tap reads input somewhere: this axis needs its padding
            taps = (0, k - 1)  # a 1-tap "same" axis or a "valid" one: VALID already
        window.append(taps)
    return None if all(t == (0, k - 1) for t, k in zip(window, kernel)) else window


def _sliced_op(original):
    def convolution_op(self, inputs, kernel):
        shape = inputs.shape
        window = None
        if (self.rank == 2 and self.groups == 1 and tuple(self.dilation_rate) == (1, 1)
                and self.data_format == "channels_last" and isinstance(self.padding, str)
                and shape.rank == 4 and shape[1] is not None and shape[2] is not None):
            window = valid_window((shape[1], shape[2]), self.kernel_size, self.strides, self.padding)
        if window is None:
            return original(self, inputs, kernel)
        (r0, r1), (c0, c1) = window
        return tf.nn.convolution(inputs, kernel[r0:r1 + 1, c0:c1 + 1], strides=list(self.strides), padding="VALID",
                                 data_format="NHWC", name=self.__class__.__name__)

    return convolution_op


@contextlib.contextmanager
def sliced_convolutions() -> Iterator[None]:
    """Within the block, Keras Conv2D layers traced on tiny static feature maps use only their used taps."""
    from keras.src.layers.convolutional.base_conv import Conv

    original = Conv.convolution_op
    Conv.convolution_op = _sliced_op(original)
    try:
        yield
    finally:
        Conv.convolution_op = original
