"""VGG 16/19 (Simonyan & Zisserman 2014), optionally with batch norm.

Names follow the original's CNNBlock: `block_<b><letter>_conv_1`, `block_<b><letter>_bn_1`,
`block_<b><letter>_act`, pools `block<b>_pool`; head `fc1`, `fc2`, `predictions`.
Freeze blocks 1-5 are the conv blocks.

use_pooling=false replaces the max-pools by stride 2 on the first conv of blocks 2-5 (total stride 16,
like the original's strided templates). retain_head is the ImageNet head: flatten -> FC4096 -> dropout
-> FC4096 -> dropout -> predictions (dropout from the spec, 0.5 when the spec says 0); the flatten makes
its size depend on the input size (7x7x512 at 224).
"""

from __future__ import annotations

import tensorflow as tf

from kestrel_trainer.models.builder import model_input
from kestrel_trainer.models.layers import Ctx, classifier_head
from kestrel_trainer.models.registry import block_regex, register_model
from kestrel_trainer.spec.types import ModelSpec

L = tf.keras.layers

CONFIGS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)

block_of = block_regex(r"^block_?(\d)")


@register_model("vgg", family="vgg", block_of=block_of, min_input=32)
def build_vgg(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    x = inputs
    for b, (n, width) in enumerate(zip(CONFIGS[spec.n_layers], WIDTHS, strict=False), start=1):
        for i in range(1, n + 1):
            stride = 2 if (not spec.use_pooling and b > 1 and i == 1) else 1
            p = f"block_{b}{chr(ord('a') + i - 1)}_"
            x = ctx.conv_bn_act(x, width, 3, stride, conv=p + "conv_1", bn=p + "bn_1", act=p + "act")
        if spec.use_pooling:
            x = L.MaxPooling2D(2, strides=2, padding="same", name=f"block{b}_pool")(x)
    if not spec.retain_head:
        return tf.keras.Model(inputs, classifier_head(x, n_classes), name=spec.name)
    rate = spec.dropout or 0.5
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(4096, name="fc1")(x)
    x = ctx.act("fc1_act")(x)
    x = L.Dropout(rate, name="fc1_dropout")(x)
    x = L.Dense(4096, name="fc2")(x)
    x = ctx.act("fc2_act")(x)
    x = L.Dropout(rate, name="fc2_dropout")(x)
    out = L.Dense(n_classes, activation="softmax", name="predictions")(x)
    return tf.keras.Model(inputs, out, name=spec.name)
