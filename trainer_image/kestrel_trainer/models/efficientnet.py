"""EfficientNet B0-B7 (Tan & Le 2019): the B0 architecture as data, scaled by width/depth per variant.

Names are Keras applications' (`stem_conv`, `block2a_expand_conv`, `block2a_se_reduce`, `top_conv`, ...),
so ImageNet weights saved from `tf.keras.applications` load by name. Freeze ids: 0 = stem,
1-7 = the seven stages (`block<k>...`), 8 = `top_*`.

Differences from Keras applications: no Rescaling/Normalization layers (preprocessing is the data
pipeline's job), 'same' padding instead of explicit ZeroPadding (same parameters), and the activation
comes from the spec (the original ignores it for b0; we do not). As in the original's template, every conv
is followed by batch norm whatever use_batch_norm says (the loader resolves it, spec/families.py), the
squeeze-excite convs always keep their bias, `project_conv` never has one, and the other convs follow
use_bias; without conv biases the trainable counts equal Keras' (b0 5,288,548).
"""

from __future__ import annotations

import math

import tensorflow as tf

from kestrel_trainer.models.builder import model_input
from kestrel_trainer.models.layers import Ctx, classifier_head, gap_dense_head
from kestrel_trainer.models.registry import register_model
from kestrel_trainer.spec.types import ModelSpec

L = tf.keras.layers

# (kernel, repeats, filters_in, filters_out, expand_ratio, stride, se_ratio) per stage, B0
B0_BLOCKS = (
    (3, 1, 32, 16, 1, 1, 0.25),
    (3, 2, 16, 24, 6, 2, 0.25),
    (5, 2, 24, 40, 6, 2, 0.25),
    (3, 3, 40, 80, 6, 2, 0.25),
    (5, 3, 80, 112, 6, 1, 0.25),
    (5, 4, 112, 192, 6, 2, 0.25),
    (3, 1, 192, 320, 6, 1, 0.25),
)
# variant -> (width, depth), from the facts file; its head dropout is in spec/families.py (the loader sets it)
SCALING = {
    "efficientnet_b0": (1.0, 1.0),
    "efficientnet_b1": (1.0, 1.1),
    "efficientnet_b2": (1.1, 1.2),
    "efficientnet_b3": (1.2, 1.4),
    "efficientnet_b4": (1.4, 1.8),
    "efficientnet_b5": (1.6, 2.2),
    "efficientnet_b6": (1.8, 2.6),
    "efficientnet_b7": (2.0, 3.1),
}
DROP_CONNECT_RATE = 0.2
DIVISOR = 8


def block_of(name: str):
    if name.startswith("stem_"):
        return 0
    if name.startswith("top_"):
        return 8
    if name.startswith("block") and name[5:6].isdigit():
        return int(name[5])
    return None


def round_filters(filters: float, width: float) -> int:
    filters *= width
    new = max(DIVISOR, int(filters + DIVISOR / 2) // DIVISOR * DIVISOR)
    if new < 0.9 * filters:  # never round down by more than 10%
        new += DIVISOR
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def _mb_conv(ctx: Ctx, x, name: str, k: int, f_in: int, f_out: int, expand: int, stride: int, se: float,
             drop: float):
    inputs = x
    filters = f_in * expand
    if expand != 1:
        x = ctx.conv_bn_act(x, filters, 1, conv=name + "expand_conv", bn=name + "expand_bn",
                            act=name + "expand_activation")
    x = ctx.dw_bn_act(x, k, stride, conv=name + "dwconv", bn=name + "bn", act=name + "activation")
    if 0 < se <= 1:
        n_se = max(1, int(f_in * se))
        s = L.GlobalAveragePooling2D(name=name + "se_squeeze")(x)
        s = L.Reshape((1, 1, filters), name=name + "se_reshape")(s)
        s = L.Conv2D(n_se, 1, padding="same", kernel_initializer="he_normal", name=name + "se_reduce")(s)
        s = ctx.act(name + "se_activation")(s)
        s = L.Conv2D(filters, 1, padding="same", activation="sigmoid", name=name + "se_expand")(s)
        x = L.Multiply(name=name + "se_excite")([x, s])
    x = ctx.conv_bn_act(x, f_out, 1, conv=name + "project_conv", bn=name + "project_bn", act=None, bias=False)
    if stride == 1 and f_in == f_out:
        if drop > 0:
            x = L.Dropout(drop, noise_shape=(None, 1, 1, 1), name=name + "drop")(x)  # stochastic depth
        x = L.Add(name=name + "add")([x, inputs])
    return x


def _build(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    width, depth = SCALING[spec.arch]
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    x = ctx.conv_bn_act(inputs, round_filters(32, width), 3, 2, conv="stem_conv", bn="stem_bn",
                        act="stem_activation")
    total = float(sum(round_repeats(b[1], depth) for b in B0_BLOCKS))
    b = 0
    for stage, (k, repeats, f_in, f_out, expand, stride, se) in enumerate(B0_BLOCKS, start=1):
        f_in, f_out = round_filters(f_in, width), round_filters(f_out, width)
        for j in range(round_repeats(repeats, depth)):
            x = _mb_conv(ctx, x, f"block{stage}{chr(97 + j)}_", k, f_in if j == 0 else f_out, f_out, expand,
                         stride if j == 0 else 1, se, DROP_CONNECT_RATE * b / total)
            b += 1
    x = ctx.conv_bn_act(x, round_filters(1280, width), 1, conv="top_conv", bn="top_bn", act="top_activation")
    if spec.retain_head:
        out = gap_dense_head(x, n_classes, spec.dropout, pool_name="avg_pool",
                             dropout_name="top_dropout")
    else:
        out = classifier_head(x, n_classes)
    return tf.keras.Model(inputs, out, name=spec.name)


for _arch in SCALING:
    register_model(_arch, family="efficientnet", block_of=block_of, min_input=32)(_build)
