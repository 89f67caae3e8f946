"""freeze_blocks and freeze_bn really freeze, every family maps its layers to its documented block ids."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.errors import SpecError
from kestrel_trainer.models.registry import block_id_of, create_model
from kestrel_trainer.spec.types import FREEZE_BLOCK_IDS

from .specs import ALL_VARIANTS, make_spec


def _step(model, channels=3, size=32, n_classes=4):
    rng = np.random.default_rng(1)
    model.compile(tf.keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.train_on_batch(rng.random((4, size, size, channels), dtype=np.float32), np.arange(4) % n_classes)


def _snapshot(model):
    return {layer.name: [w.numpy().copy() for w in layer.weights] for layer in model.layers if layer.weights}


def test_freeze_blocks_keeps_weights_and_bn_statistics_unchanged():
    model = create_model(make_spec("resnet", 18, size=32, freeze_blocks=(0, 2)), 4)
    before = _snapshot(model)
    _step(model)
    after = _snapshot(model)
    for name, weights in before.items():
        same = all(np.array_equal(a, b) for a, b in zip(weights, after[name]))
        block = block_id_of("resnet", name)
        if block in (0, 2):
            assert same, f"{name} (block {block}) changed although frozen"
        elif name.startswith(("block_1", "block_3", "block_4")) and "conv" in name:
            assert not same, f"{name} did not train"


def test_freeze_bn_fixes_moving_statistics_but_convs_train():
    model = create_model(make_spec("resnet", 10, size=32, freeze_bn=True), 4)
    before = _snapshot(model)
    _step(model)
    after = _snapshot(model)
    bns = [layer.name for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    for name in bns:
        assert all(np.array_equal(a, b) for a, b in zip(before[name], after[name])), name
    assert not np.array_equal(before["block_4a_conv_2"][0], after["block_4a_conv_2"][0])


def test_unknown_freeze_block_is_a_spec_error():
    with pytest.raises(SpecError, match="freeze_blocks.*5"):
        create_model(make_spec("resnet", 18, size=32, freeze_blocks=(5,)), 4)


def test_unknown_depth_is_a_spec_error():
    with pytest.raises(SpecError, match="n_layers"):
        create_model(make_spec("resnet", 20, size=32), 4)


@pytest.mark.parametrize("arch,n", ALL_VARIANTS[:2] + ALL_VARIANTS[7:17] + ALL_VARIANTS[17:18],
                         ids=lambda v: str(v))
def test_every_block_id_exists_and_every_backbone_weight_has_one(arch, n):
    model = create_model(make_spec(arch, n, size=32, retain_head=(arch == "alexnet")), 4)
    head = {"predictions", "conv10", "conv_head", "fc1", "fc2"}
    ids = set()
    for layer in model.layers:
        bid = block_id_of(arch, layer.name)
        if layer.weights and layer.name not in head:
            assert bid is not None, f"{arch}: {layer.name} has weights but no freeze block"
        if bid is not None:
            ids.add(bid)
    assert ids == set(FREEZE_BLOCK_IDS[arch])
