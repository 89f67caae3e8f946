"""DarkNet 19/53 (YOLO9000, YOLOv3), CSPDarkNet 19/53 (CSPNet, YOLOv4) and CSPDarkNet-tiny (YOLOv4-tiny).

Names follow the original: stem `conv1`; darknet19 `maxpool_<k>`, `b<k>_conv<i>`; darknet53 downsampling
`conv<k+1>`, residuals `b<k>_conv<i>_1`, `b<k>_conv<i>_2`, `b<k>_add<i>`; every conv has `<name>_bn` and
`<name>_act`. Freeze ids: 0 = stem, 1-5 = stages (the layers named b<k>, conv<k+1>, maxpool_<k>).

CSPDarkNet-19/53 are the original's templates (its open-source cspdarknet.py), names included: a stage of
width w splits into two 1x1 convs to h = w/2 (stage 1 of cspdarknet53: h = w), `b<k>_part1`/`b<k>_part2`
(19) or `conv<k+1>_1`/`conv<k+1>_2` (53); the second part goes through the stage's convs at h (darknet53's
residual blocks [1x1, 3x3] at h, stage 1's bottleneck 32 wide) and a 1x1 `b<k>_partial_trans` at h; both
parts are concatenated (`b<k>_concat`) and fused by a 1x1 `b<k>_final_trans` to w. cspdarknet19's stage 1
is darknet19's single conv, and its stages 2-5 start with their 3x3 conv to w before the split.

Activation: the spec's (the loader defaults this family to leaky_relu, alpha 0.1, the original's
LeakyReLU(0.1)); relu, relu6, swish and mish work too.
retain_head: 1x1 conv `conv_head` (n_classes) -> global average pool -> softmax `predictions` (YOLO9000's
classifier).
"""

from __future__ import annotations

import re

import tensorflow as tf

from kestrel_trainer.models.builder import model_input
from kestrel_trainer.models.layers import HEAD_DTYPE, Ctx, classifier_head
from kestrel_trainer.models.registry import register_model
from kestrel_trainer.spec.types import ModelSpec

L = tf.keras.layers

# darknet19 stages 1..5 after the stem: list of (filters, kernel), each stage starts with a 2x2 max-pool
D19 = (((64, 3),), ((128, 3), (64, 1), (128, 3)), ((256, 3), (128, 1), (256, 3)),
       ((512, 3), (256, 1), (512, 3), (256, 1), (512, 3)), ((1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3)))
# darknet53 stages: (filters, residual repeats)
D53 = ((64, 1), (128, 2), (256, 8), (512, 8), (1024, 4))


def block_of(name: str):
    if name.startswith("conv1_") or name == "conv1":
        return 0
    m = re.match(r"^(?:b|maxpool_)(\d)", name) or re.match(r"^conv(\d)", name)
    if not m:
        return None
    k = int(m.group(1))
    return k - 1 if name.startswith("conv") else k


def _cba(ctx: Ctx, x, filters: int, kernel: int, stride: int, name: str):
    return ctx.conv_bn_act(x, filters, kernel, stride, conv=name, bn=name + "_bn", act=name + "_act")


def _head(spec: ModelSpec, ctx: Ctx, inputs, x, n_classes: int) -> tf.keras.Model:
    if not spec.retain_head:
        return tf.keras.Model(inputs, classifier_head(x, n_classes), name=spec.name)
    x = L.Conv2D(n_classes, 1, padding="same", name="conv_head")(x)
    x = L.GlobalAveragePooling2D(name="avg_pool")(x)
    return tf.keras.Model(inputs, L.Activation("softmax", name="predictions", dtype=HEAD_DTYPE)(x), name=spec.name)


def _d19_stage(ctx: Ctx, x, k: int, convs, prefix: str, first: int = 1):
    for i, (f, kern) in enumerate(convs, start=first):
        x = _cba(ctx, x, f, kern, 1, f"{prefix}{k}_conv{i}")
    return x


def _d53_stage(ctx: Ctx, x, k: int, filters: int, repeats: int, prefix: str):
    for i in range(1, repeats + 1):
        y = _cba(ctx, x, filters // 2, 1, 1, f"{prefix}{k}_conv{i}_1")
        y = _cba(ctx, y, filters, 3, 1, f"{prefix}{k}_conv{i}_2")
        x = L.Add(name=f"{prefix}{k}_add{i}")([x, y])
    return x


def _csp(ctx: Ctx, x, k: int, width: int, half: int, parts: tuple[str, str], body) -> tf.Tensor:
    """Cross-stage partial stage (the original's): one part skips `body`, both are fused to `width`."""
    skipped = _cba(ctx, x, half, 1, 1, parts[0])
    x = body(_cba(ctx, x, half, 1, 1, parts[1]))
    x = _cba(ctx, x, half, 1, 1, f"b{k}_partial_trans")
    x = L.Concatenate(name=f"b{k}_concat")([x, skipped])
    return _cba(ctx, x, width, 1, 1, f"b{k}_final_trans")


def _d53_csp_stage(ctx: Ctx, x, k: int, half: int, repeats: int):
    """The original's CSP residual blocks: [1x1, 3x3] at the part's width (stage 1: a 32-wide bottleneck)."""
    for i in range(1, repeats + 1):
        y = _cba(ctx, x, 32 if k == 1 else half, 1, 1, f"b{k}_conv{i}_1")
        y = _cba(ctx, y, half, 3, 1, f"b{k}_conv{i}_2")
        x = L.Add(name=f"b{k}_add{i}")([x, y])
    return x


def _features(spec: ModelSpec, ctx: Ctx, inputs, csp: bool):
    x = _cba(ctx, inputs, 32, 3, 1, "conv1")
    if spec.n_layers == 19:
        for k, convs in enumerate(D19, start=1):
            x = L.MaxPooling2D(2, strides=2, padding="same", name=f"maxpool_{k}")(x)
            if csp and k > 1:
                width, half = convs[0][0], convs[0][0] // 2
                x = _cba(ctx, x, width, convs[0][1], 1, f"b{k}_conv1")
                x = _csp(ctx, x, k, width, half, (f"b{k}_part1", f"b{k}_part2"),
                         lambda t, k=k, convs=convs, half=half: _d19_stage(
                             ctx, t, k, [(half, kk) for _f, kk in convs[1:]], "b", first=2))
            else:
                x = _d19_stage(ctx, x, k, convs, "b")
        return x
    for k, (filters, repeats) in enumerate(D53, start=1):
        x = _cba(ctx, x, filters, 3, 2, f"conv{k + 1}")
        if csp:
            half = filters if k == 1 else filters // 2
            x = _csp(ctx, x, k, filters, half, (f"conv{k + 1}_1", f"conv{k + 1}_2"),
                     lambda t, k=k, half=half, repeats=repeats: _d53_csp_stage(ctx, t, k, half, repeats))
        else:
            x = _d53_stage(ctx, x, k, filters, repeats, "b")
    return x


@register_model("darknet", family="darknet", block_of=block_of, min_input=32)
def build_darknet(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    return _head(spec, ctx, inputs, _features(spec, ctx, inputs, csp=False), n_classes)


@register_model("cspdarknet", family="darknet", block_of=block_of, min_input=32)
def build_cspdarknet(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    return _head(spec, ctx, inputs, _features(spec, ctx, inputs, csp=True), n_classes)


def _tiny_block(ctx: Ctx, x, k: int, filters: int):
    """YOLOv4-tiny CSP block: conv, keep the second half of the channels, two convs, concat, 1x1, concat."""
    x = _cba(ctx, x, filters, 3, 1, f"b{k}_conv1")
    route = x
    half = x[..., filters // 2:]  # a TFOpLambda slice: serialises without Python bytecode
    y = _cba(ctx, half, filters // 2, 3, 1, f"b{k}_conv2")
    z = _cba(ctx, y, filters // 2, 3, 1, f"b{k}_conv3")
    y = L.Concatenate(name=f"b{k}_concat1")([z, y])
    y = _cba(ctx, y, filters, 1, 1, f"b{k}_conv4")
    x = L.Concatenate(name=f"b{k}_concat2")([route, y])
    return L.MaxPooling2D(2, strides=2, padding="same", name=f"maxpool_{k}")(x)


@register_model("cspdarknet_tiny", family="darknet", block_of=block_of, min_input=32)
def build_cspdarknet_tiny(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    x = _cba(ctx, inputs, 32, 3, 2, "conv1")
    x = _cba(ctx, x, 64, 3, 2, "conv2")  # block 1
    for k, filters in ((2, 64), (3, 128), (4, 256)):
        x = _tiny_block(ctx, x, k, filters)
    x = _cba(ctx, x, 512, 3, 1, "b5_conv1")
    return _head(spec, ctx, inputs, x, n_classes)
