"""SqueezeNet 1.0 (Iandola et al. 2016) as the original's template.

Names: stem `conv1`, `pool1`; fire modules `fire<i>_squeeze_conv`, `fire<i>_expand_conv1x1`,
`fire<i>_expand_conv3x3` (+ `_bn`, `_act`), concatenated in `fire<i>`; pools `pool3`, `pool5`.
Freeze ids: 0 = stem, 1-8 = fire2..fire9.
retain_head (the family's): dropout (the original's fixed 1e-3, set by the loader) -> 1x1 conv `conv10`
(n_classes) -> ReLU -> global average pool -> softmax `predictions`, as in the paper. As in the original's
template, every conv is ReLU with a bias and no batch norm whatever the spec says (the loader resolves them,
spec/families.py): the paper's 1,248,424-parameter network.
"""

from __future__ import annotations

import tensorflow as tf

from kestrel_trainer.models.builder import model_input
from kestrel_trainer.models.layers import HEAD_DTYPE, Ctx, classifier_head
from kestrel_trainer.models.registry import register_model
from kestrel_trainer.spec.types import ModelSpec

L = tf.keras.layers

FIRES = ((2, 16, 64), (3, 16, 64), (4, 32, 128), "pool", (5, 32, 128), (6, 48, 192), (7, 48, 192),
         (8, 64, 256), "pool", (9, 64, 256))


def block_of(name: str):
    if name.startswith(("conv1", "pool1")):
        return 0
    if name.startswith("fire") and name[4:5].isdigit():
        return int(name[4]) - 1
    return None


def _fire(ctx: Ctx, x, i: int, squeeze: int, expand: int):
    p = f"fire{i}_"
    x = ctx.conv_bn_act(x, squeeze, 1, conv=p + "squeeze_conv", bn=p + "squeeze_bn", act=p + "squeeze")
    a = ctx.conv_bn_act(x, expand, 1, conv=p + "expand_conv1x1", bn=p + "expand_1x1_bn", act=p + "expand_1x1")
    b = ctx.conv_bn_act(x, expand, 3, conv=p + "expand_conv3x3", bn=p + "expand_3x3_bn", act=p + "expand_3x3")
    return L.Concatenate(name=f"fire{i}")([a, b])


@register_model("squeezenet", family="squeezenet", block_of=block_of, min_input=32)
def build_squeezenet(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    x = ctx.conv_bn_act(inputs, 96, 7, 2, conv="conv1", bn="conv1_bn", act="conv1_act")
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    n_pool = 3
    for item in FIRES:
        if item == "pool":
            x = L.MaxPooling2D(3, strides=2, padding="same", name=f"pool{n_pool}")(x)
            n_pool += 2
        else:
            x = _fire(ctx, x, *item)
    if not spec.retain_head:
        return tf.keras.Model(inputs, classifier_head(x, n_classes), name=spec.name)
    x = L.Dropout(spec.dropout, name="drop9")(x)
    x = L.Conv2D(n_classes, 1, padding="same", kernel_initializer="he_normal", name="conv10")(x)
    x = L.ReLU(name="conv10_act")(x)
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    out = L.Activation("softmax", name="predictions", dtype=HEAD_DTYPE)(x)
    return tf.keras.Model(inputs, out, name=spec.name)
