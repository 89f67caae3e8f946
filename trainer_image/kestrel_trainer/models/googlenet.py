"""GoogLeNet / Inception v1 (Szegedy et al. 2014), without the auxiliary heads and LRN.

Names: stem `conv1`, `pool1`, `conv2_reduce`, `conv2`, `pool2`; inception blocks
`inception_<id>_{1x1,3x3_reduce,3x3,5x5_reduce,5x5,pool,pool_proj}` (+ `_bn`, `_act`) concatenated in
`inception_<id>_output`. Freeze ids: 0 stem, 1-9 = inception 3a, 3b, 4a-4e, 5a, 5b.
retain_head: global average pool -> dropout 0.4 (the loader's fixed rate, spec/families.py) -> predictions.
"""

from __future__ import annotations

import tensorflow as tf

from kestrel_trainer.models.builder import model_input
from kestrel_trainer.models.layers import Ctx, classifier_head, gap_dense_head
from kestrel_trainer.models.registry import register_model
from kestrel_trainer.spec.types import ModelSpec

L = tf.keras.layers

# id, (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj); "pool" marks a stride-2 max-pool.
INCEPTIONS = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    "pool",
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    "pool",
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)
BLOCK_IDS = {spec[0]: i for i, spec in enumerate((s for s in INCEPTIONS if s != "pool"), start=1)}
STEM = {"conv1", "pool1", "conv2_reduce", "conv2", "pool2"}


def block_of(name: str):
    if name.startswith("inception_"):
        return BLOCK_IDS.get(name[10:12])
    base = name.rsplit("_bn", 1)[0].rsplit("_act", 1)[0]
    return 0 if base in STEM else None


def _inception(ctx: Ctx, x, bid: str, f):
    p = f"inception_{bid}_"

    def cba(t, n, k, sub):
        return ctx.conv_bn_act(t, n, k, conv=p + sub, bn=p + sub + "_bn", act=p + sub + "_act")

    b1 = cba(x, f[0], 1, "1x1")
    b2 = cba(cba(x, f[1], 1, "3x3_reduce"), f[2], 3, "3x3")
    b3 = cba(cba(x, f[3], 1, "5x5_reduce"), f[4], 5, "5x5")
    b4 = L.MaxPooling2D(3, strides=1, padding="same", name=p + "pool")(x)
    b4 = cba(b4, f[5], 1, "pool_proj")
    return L.Concatenate(name=p + "output")([b1, b2, b3, b4])


@register_model("googlenet", family="googlenet", block_of=block_of, min_input=32)
def build_googlenet(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    x = ctx.conv_bn_act(inputs, 64, 7, 2, conv="conv1", bn="conv1_bn", act="conv1_act")
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = ctx.conv_bn_act(x, 64, 1, conv="conv2_reduce", bn="conv2_reduce_bn", act="conv2_reduce_act")
    x = ctx.conv_bn_act(x, 192, 3, conv="conv2", bn="conv2_bn", act="conv2_act")
    x = L.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    n_pool = 3
    for item in INCEPTIONS:
        if item == "pool":
            x = L.MaxPooling2D(3, strides=2, padding="same", name=f"pool{n_pool}")(x)
            n_pool += 1
        else:
            x = _inception(ctx, x, *item)
    if spec.retain_head:
        out = gap_dense_head(x, n_classes, spec.dropout, dropout_name="head_dropout")
    else:
        out = classifier_head(x, n_classes)
    return tf.keras.Model(inputs, out, name=spec.name)
