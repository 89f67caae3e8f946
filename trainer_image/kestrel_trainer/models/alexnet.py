"""AlexNet (Krizhevsky et al. 2012), single-tower, as the original's template.

Names: `conv1`..`conv5` (+ `_bn`, `_act`), `pool1`, `pool2`; head `fc6`, `fc7`, `predictions`.
Freeze ids 1-5 are the convs, 6-7 the FC layers, 8 the final classifier (the original's ids).
As the original's template (templates/alexnet.py:95-147), the only pools are after conv1 and conv2, with
'same' padding (so 32x32 inputs work): the head's `fc6` reads conv5's map, 14x14 at 224 (the paper pools it
to 6x6 first), and the original's fc6 weights load by name. As there, every conv and FC layer
is ReLU with a bias and no batch norm, and the family head has no dropout: the loader resolves activation,
use_batch_norm, use_bias and dropout to those whatever the spec says (spec/families.py).
"""

from __future__ import annotations

import tensorflow as tf

from kestrel_trainer.models.builder import model_input
from kestrel_trainer.models.layers import HEAD_DTYPE, Ctx, classifier_head
from kestrel_trainer.models.registry import register_model
from kestrel_trainer.spec.types import ModelSpec

L = tf.keras.layers

CONVS = ((96, 11, 4), (256, 5, 1), (384, 3, 1), (384, 3, 1), (256, 3, 1))  # filters, kernel, stride


def block_of(name: str):
    for prefix, bid in (("conv", None), ("fc6", 6), ("fc7", 7), ("predictions", 8)):
        if name.startswith(prefix):
            if bid is None:
                return int(name[4]) if name[4:5].isdigit() else None
            return bid
    if name in ("pool1", "pool2", "pool5"):  # pool5: Kestrel's alexnet files from before it followed the original
        return int(name[4])
    return None


@register_model("alexnet", family="alexnet", block_of=block_of, min_input=32)
def build_alexnet(spec: ModelSpec, n_classes: int) -> tf.keras.Model:
    ctx = Ctx.from_spec(spec)
    inputs = model_input(spec)
    x = inputs
    for i, (f, k, s) in enumerate(CONVS, start=1):
        x = ctx.conv_bn_act(x, f, k, s, conv=f"conv{i}", bn=f"conv{i}_bn", act=f"conv{i}_act")
        if i in (1, 2):
            x = L.MaxPooling2D(3, strides=2, padding="same", name=f"pool{i}")(x)
    if not spec.retain_head:
        return tf.keras.Model(inputs, classifier_head(x, n_classes), name=spec.name)
    rate = spec.dropout  # the loader's (spec/families.py): 0, the original's head has no dropout
    x = L.Flatten(name="flatten")(x)
    for name in ("fc6", "fc7"):
        x = L.Dense(4096, name=name)(x)
        x = ctx.act(f"{name}_act")(x)
        if rate > 0:
            x = L.Dropout(rate, name=f"{name}_dropout")(x)
    out = L.Dense(n_classes, activation="softmax", name="predictions", dtype=HEAD_DTYPE)(x)
    return tf.keras.Model(inputs, out, name=spec.name)
