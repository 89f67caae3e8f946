"""What every family shares after its layers exist: input, model naming and freezing.

Freezing lives here, once, keyed on layer names through the family's `block_of`: pruning rebuilds
models by name and loads them again, and the same freezing must apply to the rebuilt model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Optional

import tensorflow as tf

from kestrel_trainer.spec.types import ModelSpec

log = logging.getLogger(__name__)


def model_input(spec: ModelSpec) -> tf.Tensor:
    """Channels-last input (H, W, C) named `input_1` (stable: export and inference use it)."""
    return tf.keras.Input(shape=spec.input_shape, name="input_1")


def finalize(model: tf.keras.Model, spec: ModelSpec, block_of: Callable[[str], Optional[int]]) -> tf.keras.Model:
    """Apply freeze_blocks and freeze_bn.

    - freeze_blocks: every layer of a listed block stops training, its BN layers included (a
      trainable=False BN runs in inference mode, so a frozen block's statistics do not drift either;
      the original kept those BN layers updating).
    - freeze_bn: every BN layer runs in inference mode with its moving statistics fixed. Keras ties
      inference mode to trainable=False, so gamma/beta are frozen as well (the original keeps training
      them); this is the standard Keras 2 fine-tuning behaviour.
    """
    frozen = set(spec.freeze_blocks)
    n_frozen = 0
    for layer in model.layers:
        if frozen and block_of(layer.name) in frozen:
            layer.trainable = False
            n_frozen += 1
        if spec.freeze_bn and isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.trainable = False
    if frozen:
        log.info("froze %d layers in blocks %s", n_frozen, sorted(frozen))
    return model


def layers_by_block(model: tf.keras.Model, block_of: Callable[[str], Optional[int]]) -> dict:
    """{block id or None: [layer, ...]} in model order (for `model info` and tests)."""
    groups: dict = {}
    for layer in model.layers:
        groups.setdefault(block_of(layer.name), []).append(layer)
    return groups
