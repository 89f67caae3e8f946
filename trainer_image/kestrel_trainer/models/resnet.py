"""ResNet 10/18/34/50/101/152/200 (He et al. 2015), the original's template in channels_last.

Layer names follow the original: `conv1`, `bn_conv1`, then `block_<stage><letter>_conv_<i>`,
`block_<stage><letter>_bn_<i>`, `..._conv_shortcut`, `..._bn_shortcut`. Freeze block 0 is the stem,
1-4 are the stages.

Shortcuts as in the original template: the first block of every stage projects (1x1 conv + BN), also
where the shape does not change (resnet 10/18/34 with use_pooling: block_1a, 64->64, 4,224 parameters
more than torchvision's counts), so the original's weights load by name; all_projections projects all.

Where we differ from the original template:
- retain_head pools globally (the original pools 7x7 with 'same' padding then flattens, which only
  gives 1x1 at 224x224).
"""

from __future__ import annotations

import tensorflow as tf

from kestrel_trainer.models.builder import model_input
from kestrel_trainer.models.layers import Ctx, classifier_head, gap_dense_head
from kestrel_trainer.models.registry import register_model
from kestrel_trainer.spec.types import ModelSpec

L = tf.keras.layers

# depth -> (repeats per stage, bottleneck?)
DEPTHS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    10: ((1, 1, 1, 1), False),
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}
WIDTHS = (64, 128, 256, 512)


def block_of(name: str):
    if name in ("conv1", "bn_conv1", "conv1_relu", "conv1_act", "pool1"):
        return 0
    if name.startswith("block_") and name[6:7].isdigit():
        return int(name[6])
    return None


def _letters(i: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa (the original's sub-block ids; resnet152 has 36 blocks in stage 3)."""
    s = ""
    while i >= 0:
        s = chr(ord("a") + i % 26) + s
        i = i // 26 - 1
    return s


def _residual_block(ctx: Ctx, x, convs: list[tuple[int, int]], stride: int, prefix: str, project: bool):
    shortcut = x
    for i, (k, f) in enumerate(convs, start=1):
        last = i == len(convs)
        x = ctx.conv_bn_act(x, f, k, stride if i == 1 else 1, conv=f"{prefix}conv_{i}", bn=f"{prefix}bn_{i}",
                            act=None if last else f"{prefix}act_{i}")
    out_ch = convs[-1][1]
    if project or stride != 1 or shortcut.shape[-1] != out_ch:
        shortcut = ctx.conv_bn_act(shortcut, out_ch, 1, stride, conv=f"{prefix}conv_shortcut",
                                   bn=f"{prefix}bn_shortcut", act=None)
    x = L.Add(name=f"{prefix}add")([x, shortcut])
    return ctx.act(f"{prefix}act")(x)


def resnet_features(spec: ModelSpec, ctx: Ctx, inputs):
    repeats, bottleneck = DEPTHS[spec.n_layers]
    x = ctx.conv_bn_act(inputs, 64, 7, 2, conv="conv1", bn="bn_conv1", act="conv1_act")
    # use_pooling: max-pool after the stem, stages at strides 1,2,2,2 (total 32).
    # Otherwise the original's strided template: stages at strides 2,2,2,1 (total 16).
    if spec.use_pooling:
        x = L.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
        strides = (1, 2, 2, 2)
    else:
        strides = (2, 2, 2, 1)
    for stage, (n, width, stride) in enumerate(zip(repeats, WIDTHS, strides, strict=False), start=1):
        convs = [(1, width), (3, width), (1, width * 4)] if bottleneck else [(3, width), (3, width)]
        for b in range(n):
            x = _residual_block(ctx, x, convs, stride if b == 0 else 1, f"block_{stage}{_letters(b)}_",
                                spec.all_projections or b == 0)  # the original projects every stage's first block
    return x


@register_model("resnet", family="resnet", block_of=block_of, min_input=32)
def build_resnet(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    x = resnet_features(spec, ctx, inputs)
    if spec.retain_head:
        out = gap_dense_head(x, n_classes, spec.dropout, dropout_name="head_dropout")
    else:
        out = classifier_head(x, n_classes)
    return tf.keras.Model(inputs, out, name=spec.name)
