"""Under mixed precision (--use_amp) the softmax head stays float32 while the body computes in float16."""

from __future__ import annotations

import pytest
import tensorflow as tf

from kestrel_trainer.models.registry import create_model

from .specs import make_spec


# one family per kind of head: the shared Dense head, squeezenet's and darknet's softmax activations
@pytest.mark.parametrize("arch,n_layers,retain_head", [("resnet", 10, False), ("squeezenet", None, True),
                                                       ("darknet", 19, True)])
def test_softmax_head_is_float32_under_mixed_precision(arch, n_layers, retain_head):
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = create_model(make_spec(arch, n_layers, size=32, retain_head=retain_head), 7)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    head = model.get_layer("predictions")
    assert head.compute_dtype == "float32" and model.output.dtype == tf.float32
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert convs[0].compute_dtype == "float16"  # the body really is mixed precision
