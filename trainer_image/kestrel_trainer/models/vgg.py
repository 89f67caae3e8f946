"""VGG 16/19 (Simonyan & Zisserman 2014), optionally with batch norm.

Names follow the original's CNNBlock: `block_<b><letter>_conv_1`, `block_<b><letter>_bn_1`,
`block_<b><letter>_act`, pools `block<b>_pool`; head `fc1`, `fc2`, `predictions`.
Freeze blocks 1-5 are the conv blocks.

As the original's template: use_pooling=true max-pools after blocks 1-4 (`block1_pool`..`block4_pool`,
total stride 16) and after block 5 (`block5_pool`) only with retain_head; use_pooling=false strides the
first conv of blocks 2-5 instead (total stride 16). retain_head is the ImageNet head: `flatten` -> `fc1`
(4096, relu) -> dropout -> `fc2` (4096, relu) -> dropout -> softmax, the dropout layers only when the
spec's dropout is > 0 (as the original); the flatten makes its size depend on the input size (7x7x512
at 224). The original names the softmax layer `output_fc`; ours is `predictions` like every other family
(export and the head-resizing code rely on it), and pretrained loading maps `output_fc` onto it.
"""

from __future__ import annotations

import tensorflow as tf

from kestrel_trainer.models.builder import model_input
from kestrel_trainer.models.layers import HEAD_DTYPE, Ctx, classifier_head
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
        if spec.use_pooling and (b < 5 or spec.retain_head):
            x = L.MaxPooling2D(2, strides=2, padding="same", name=f"block{b}_pool")(x)
    if not spec.retain_head:
        return tf.keras.Model(inputs, classifier_head(x, n_classes), name=spec.name)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(4096, activation="relu", name="fc1")(x)
    if spec.dropout > 0:
        x = L.Dropout(spec.dropout, name="fc1_dropout")(x)
    x = L.Dense(4096, activation="relu", name="fc2")(x)
    if spec.dropout > 0:
        x = L.Dropout(spec.dropout, name="fc2_dropout")(x)
    out = L.Dense(n_classes, activation="softmax", name="predictions", dtype=HEAD_DTYPE)(x)
    return tf.keras.Model(inputs, out, name=spec.name)
