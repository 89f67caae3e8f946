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


def _sliced_op(original):
    def convolution_op(self, inputs, kernel):
        shape = inputs.shape
        if (self.rank != 2 or self.groups != 1 or tuple(self.dilation_rate) != (1, 1)
                or self.data_format != "channels_last" or not isinstance(self.padding, str)
                or shape.rank != 4 or shape[1] is None or shape[2] is None):
            return original(self, inputs, kernel)
        taps = [used_taps(shape[1 + a], self.kernel_size[a], self.strides[a], self.padding) for a in (0, 1)]
        if taps == [None, None]:
            return original(self, inputs, kernel)
        rows, cols = ((t if t is not None else (0, self.kernel_size[a] - 1)) for a, t in enumerate(taps))
        if (taps[0] is None and self.padding == "same" and self.kernel_size[0] > 1) or (
                taps[1] is None and self.padding == "same" and self.kernel_size[1] > 1):
            return original(self, inputs, kernel)  # the other axis still needs its padding: leave it alone
        return tf.nn.convolution(inputs, kernel[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1], strides=list(self.strides),
                                 padding="VALID", data_format="NHWC", name=self.__class__.__name__)

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
