"""reg_config: L1/L2 penalties on the kernels of the layers in scope (Conv2D, Dense).

Applied as model losses after the model is built (or loaded), not baked into the layer configs, so a
checkpoint reloaded for resume or for pretrained weights never carries a second copy of the penalty.
Depthwise and separable convolutions count as Conv2D (they are convolutions in the original's scope).
"""

from __future__ import annotations

import tensorflow as tf

from kestrel_trainer.spec.types import RegSpec

_SCOPE_TYPES = {
    "Conv2D": (
        tf.keras.layers.Conv2D,
        tf.keras.layers.DepthwiseConv2D,
        tf.keras.layers.SeparableConv2D,
        tf.keras.layers.Conv2DTranspose,
    ),
    "Dense": (tf.keras.layers.Dense,),
}


def _kernels(layer: tf.keras.layers.Layer) -> list[tf.Variable]:
    if isinstance(layer, tf.keras.layers.SeparableConv2D):
        return [layer.depthwise_kernel, layer.pointwise_kernel]
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
        return [layer.depthwise_kernel]
    return [layer.kernel]


def layers_in_scope(model: tf.keras.Model, reg: RegSpec) -> list[tf.keras.layers.Layer]:
    """Every layer (nested models included) whose kernel the spec regularizes."""
    if reg.type == "None":
        return []
    types = tuple(t for scope in reg.scope for t in _SCOPE_TYPES[scope])
    found = []
    for layer in model.submodules:
        if isinstance(layer, types) and layer.trainable:
            found.append(layer)
    return found


def add_regularization(model: tf.keras.Model, reg: RegSpec) -> list[str]:
    """Add the penalty of each kernel in scope to `model.losses`; returns the kernel names covered."""
    if reg.type == "None":
        return []
    penalty = tf.keras.regularizers.L1(reg.weight_decay) if reg.type == "L1" else tf.keras.regularizers.L2(
        reg.weight_decay
    )
    names = []
    for layer in layers_in_scope(model, reg):
        for kernel in _kernels(layer):
            model.add_loss(lambda k=kernel: penalty(k))
            names.append(kernel.name)
    return names
