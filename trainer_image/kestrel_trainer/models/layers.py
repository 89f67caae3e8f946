"""Shared layer factories: convolution + batch norm + activation with the spec's options.

Every family builds its convolutions through `Ctx`, so use_bias, use_batch_norm, the batch-norm
momentum/epsilon and the activation come from one place and cannot drift between families. All layers
are stock Keras layers (mish is built into Keras 2.15), so model files need no custom objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import tensorflow as tf

from kestrel_trainer.spec.types import ModelSpec

L = tf.keras.layers

# He-normal for convolutions (the families are ReLU-like); the Dense head keeps Keras' default.
CONV_INIT = "he_normal"


@dataclass(frozen=True)
class Ctx:
    """What a family needs from the spec to build one convolution, resolved once."""

    use_bias: bool
    use_batch_norm: bool
    bn_momentum: float
    bn_epsilon: float
    activation: str
    activation_params: Mapping[str, float]

    @classmethod
    def from_spec(cls, spec: ModelSpec, activation: Optional[str] = None) -> Ctx:
        return cls(
            use_bias=spec.use_bias,
            use_batch_norm=spec.use_batch_norm,
            bn_momentum=spec.batch_norm.momentum,
            bn_epsilon=spec.batch_norm.epsilon,
            activation=activation or spec.activation.activation_type,
            activation_params=dict(spec.activation.parameters),
        )

    # -- layers -----------------------------------------------------------------------------------
    def act(self, name: str) -> tf.keras.layers.Layer:
        return make_activation(self.activation, self.activation_params, name)

    def bn(self, name: str) -> tf.keras.layers.Layer:
        return L.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name)

    def conv(self, x, filters: int, kernel: int, strides: int = 1, name: str = "", bias: Optional[bool] = None):
        """A plain conv. A conv followed by BN never needs a bias, but the spec decides (as the original)."""
        return L.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=self.use_bias if bias is None else bias,
            kernel_initializer=CONV_INIT,
            name=name,
        )(x)

    def conv_bn_act(self, x, filters: int, kernel: int, strides: int = 1, *, conv: str, bn: str,
                    act: Optional[str], bias: Optional[bool] = None):
        """conv -> BN (if use_batch_norm) -> activation (skipped when act is None); `bias` overrides use_bias."""
        x = self.conv(x, filters, kernel, strides, name=conv, bias=bias)
        if self.use_batch_norm:
            x = self.bn(bn)(x)
        if act is not None:
            x = self.act(act)(x)
        return x

    def dw_bn_act(self, x, kernel: int, strides: int, *, conv: str, bn: str, act: Optional[str]):
        x = L.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=self.use_bias,
                              depthwise_initializer=CONV_INIT, name=conv)(x)
        if self.use_batch_norm:
            x = self.bn(bn)(x)
        if act is not None:
            x = self.act(act)(x)
        return x


def make_activation(activation: str, params: Mapping[str, float], name: str) -> tf.keras.layers.Layer:
    """The spec's activation_type as a named layer (relu, relu6, swish, mish, leaky_relu)."""
    if activation == "relu":
        return L.ReLU(name=name)
    if activation == "relu6":
        return L.ReLU(max_value=6.0, name=name)
    if activation == "leaky_relu":
        return L.LeakyReLU(alpha=float(params.get("alpha", 0.1)), name=name)
    if activation in ("swish", "mish"):
        return L.Activation(activation, name=name)
    raise ValueError(f"unknown activation_type {activation!r}")


# The softmax head always computes in float32, also under mixed precision (--use_amp): a float16 softmax
# saturates and its loss loses precision. Every family's `predictions` layer uses this dtype.
HEAD_DTYPE = "float32"


def classifier_head(x, n_classes: int, dropout: float = 0.0, name_prefix: str = ""):
    """The default head: average pool over the whole map -> flatten -> Dense softmax `predictions`.

    The original uses AveragePooling2D with the map's size; GlobalAveragePooling2D is the same
    arithmetic but does not fix the input size into the graph.
    """
    x = L.GlobalAveragePooling2D(keepdims=True, name=f"{name_prefix}avg_pool")(x)
    x = L.Flatten(name=f"{name_prefix}flatten")(x)
    if dropout > 0:
        x = L.Dropout(dropout, name=f"{name_prefix}head_dropout")(x)
    return L.Dense(n_classes, activation="softmax", name="predictions", dtype=HEAD_DTYPE)(x)


def gap_dense_head(x, n_classes: int, dropout: float, pool_name: str = "avg_pool",
                   dropout_name: str = "top_dropout"):
    """ImageNet head of mobilenets/efficientnet/resnet/googlenet: global pool -> dropout -> Dense."""
    x = L.GlobalAveragePooling2D(name=pool_name)(x)
    if dropout > 0:
        x = L.Dropout(dropout, name=dropout_name)(x)
    return L.Dense(n_classes, activation="softmax", name="predictions", dtype=HEAD_DTYPE)(x)
