"""reg_config scope hits exactly the kernels it names, and the penalty has the right size."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.spec.types import RegSpec
from kestrel_trainer.train.regularizers import add_regularization


def _model() -> tf.keras.Model:
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Conv2D(4, 3, name="conv_a", use_bias=True)(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    x = tf.keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dense(5, name="fc1")(x)
    outputs = tf.keras.layers.Dense(3, name="predictions")(x)
    return tf.keras.Model(inputs, outputs)


@pytest.mark.parametrize(
    "scope,expected",
    [
        (("Conv2D",), {"conv_a/kernel:0", "dw/depthwise_kernel:0"}),
        (("Dense",), {"fc1/kernel:0", "predictions/kernel:0"}),
        (("Conv2D", "Dense"), {"conv_a/kernel:0", "dw/depthwise_kernel:0", "fc1/kernel:0", "predictions/kernel:0"}),
    ],
)
def test_scope_selects_exactly_the_named_kernels(scope, expected):
    model = _model()
    covered = add_regularization(model, RegSpec(type="L2", scope=scope, weight_decay=0.01))
    assert set(covered) == expected  # no biases, no BN gamma/beta


@pytest.mark.parametrize("kind", ["L1", "L2"])
def test_penalty_value(kind):
    model = _model()
    add_regularization(model, RegSpec(type=kind, scope=("Dense",), weight_decay=0.001))
    kernels = [model.get_layer("fc1").kernel.numpy(), model.get_layer("predictions").kernel.numpy()]
    if kind == "L1":
        expected = 0.001 * sum(np.abs(k).sum() for k in kernels)
    else:
        expected = 0.001 * sum((k**2).sum() for k in kernels)
    assert float(tf.add_n(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_none_adds_nothing():
    model = _model()
    assert add_regularization(model, RegSpec(type="None", scope=("Conv2D",), weight_decay=0.1)) == []
    assert model.losses == []


def test_absent_reg_config_means_no_regularization():
    """The original regularizes nothing when reg_config is absent (we used to add L2 5e-5 silently)."""
    from kestrel_trainer.spec import parse_spec_text

    spec = parse_spec_text(
        'model_config { arch: "resnet" n_layers: 10 input_image_size: "1,16,16" }\n'
        'train_config { train_dataset_path: "t" val_dataset_path: "v" optimizer { sgd { } } '
        'lr_config { step { learning_rate: 0.1 step_size: 10 gamma: 0.1 } } }\n',
        task="train",
    )
    assert spec.train.reg.type == "None"
    model = _model()
    assert add_regularization(model, spec.train.reg) == []
    assert model.losses == []
