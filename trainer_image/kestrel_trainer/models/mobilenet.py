"""MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018), width multiplier 1.0.

Layer names are Keras applications' (`conv_dw_3`, `block_5_project_bn`, `Conv_1`, ...) so ImageNet
weights saved from `tf.keras.applications` load by name. The original's templates could build ReLU6, but
its model builder never asks for it: they are ReLU whatever activation_type says, and so are ours (the loader
resolves it, spec/families.py). use_batch_norm and use_bias come from the spec, as there.

Freeze ids: v1: 0 = stem `conv1`, 1-13 = depthwise-separable blocks. v2: 0 = stem `Conv1`,
1 = `expanded_conv`, 2-17 = `block_1`..`block_16`, 18 = top conv `Conv_1`.
retain_head: global average pool -> Dense `predictions`, no dropout (the loader ignores the spec's; Keras
v1 uses a 1x1 conv there: same parameters).
all_projections (v2): identity shortcuts become 1x1 convs `<block>_projected_inputs` so every conv prunes.
"""

from __future__ import annotations

import re

import tensorflow as tf

from kestrel_trainer.models.builder import model_input
from kestrel_trainer.models.layers import Ctx, classifier_head, gap_dense_head
from kestrel_trainer.models.registry import register_model
from kestrel_trainer.spec.types import ModelSpec

L = tf.keras.layers

# v1: (pointwise filters, stride) for blocks 1..13
V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
# v2: (expansion t, output channels c, repeats n, first stride s), the paper's table 2
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


def v1_block_of(name: str):
    if name.startswith("conv1"):
        return 0
    m = re.match(r"^conv_(?:dw|pw|pad)_(\d+)", name)
    return int(m.group(1)) if m else None


def v2_block_of(name: str):
    if name.startswith(("Conv1", "bn_Conv1")):
        return 0
    if name.startswith("expanded_conv"):
        return 1
    m = re.match(r"^block_(\d+)_", name)
    if m:
        return int(m.group(1)) + 1
    if name.startswith(("Conv_1", "out_relu")):
        return 18
    return None


@register_model("mobilenet_v1", family="mobilenet", block_of=v1_block_of, min_input=32)
def build_mobilenet_v1(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    x = ctx.conv_bn_act(inputs, 32, 3, 2, conv="conv1", bn="conv1_bn", act="conv1_relu")
    for i, (filters, stride) in enumerate(V1_BLOCKS, start=1):
        x = ctx.dw_bn_act(x, 3, stride, conv=f"conv_dw_{i}", bn=f"conv_dw_{i}_bn", act=f"conv_dw_{i}_relu")
        x = ctx.conv_bn_act(x, filters, 1, conv=f"conv_pw_{i}", bn=f"conv_pw_{i}_bn", act=f"conv_pw_{i}_relu")
    if spec.retain_head:
        out = gap_dense_head(x, n_classes, spec.dropout, pool_name="global_average_pooling2d",
                             dropout_name="dropout")
    else:
        out = classifier_head(x, n_classes)
    return tf.keras.Model(inputs, out, name=spec.name)


def _inverted_residual(ctx: Ctx, x, t: int, c: int, stride: int, prefix: str, all_projections: bool):
    inputs = x
    in_ch = x.shape[-1]
    if t != 1:
        x = ctx.conv_bn_act(x, in_ch * t, 1, conv=prefix + "expand", bn=prefix + "expand_BN",
                            act=prefix + "expand_relu")
    x = ctx.dw_bn_act(x, 3, stride, conv=prefix + "depthwise", bn=prefix + "depthwise_BN",
                      act=prefix + "depthwise_relu")
    x = ctx.conv_bn_act(x, c, 1, conv=prefix + "project", bn=prefix + "project_BN", act=None)
    if stride == 1 and in_ch == c:
        if all_projections:
            inputs = L.Conv2D(c, 1, use_bias=False, name=prefix + "projected_inputs")(inputs)
        x = L.Add(name=prefix + "add")([inputs, x])
    return x


@register_model("mobilenet_v2", family="mobilenet", block_of=v2_block_of, min_input=32)
def build_mobilenet_v2(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    x = ctx.conv_bn_act(inputs, 32, 3, 2, conv="Conv1", bn="bn_Conv1", act="Conv1_relu")
    idx = 0
    for t, c, n, s in V2_STAGES:
        for r in range(n):
            prefix = "expanded_conv_" if idx == 0 else f"block_{idx}_"
            x = _inverted_residual(ctx, x, t, c, s if r == 0 else 1, prefix, spec.all_projections)
            idx += 1
    x = ctx.conv_bn_act(x, 1280, 1, conv="Conv_1", bn="Conv_1_bn", act="out_relu")
    if spec.retain_head:
        out = gap_dense_head(x, n_classes, spec.dropout, pool_name="global_average_pooling2d",
                             dropout_name="dropout")
    else:
        out = classifier_head(x, n_classes)
    return tf.keras.Model(inputs, out, name=spec.name)
