"""resnet and vgg built as the original's templates build them (its layer names, shortcuts, pools, head)."""

from __future__ import annotations

import tensorflow as tf

from kestrel_trainer.models.registry import create_model

from .specs import make_spec


def test_resnet18_with_pooling_projects_the_first_block_like_the_original():
    model = create_model(make_spec("resnet", 18, size=32), 4)
    names = {layer.name for layer in model.layers}
    # the original's CNNBlock projects the first block of every stage, also 64 -> 64 at stride 1
    assert model.get_layer("block_1a_conv_shortcut").kernel.shape == (1, 1, 64, 64)
    assert "block_1a_bn_shortcut" in names and "block_1b_conv_shortcut" not in names


def test_vgg16_with_pooling_has_the_originals_four_pools_without_head():
    model = create_model(make_spec("vgg", 16, size=64), 4)
    pools = [layer.name for layer in model.layers if isinstance(layer, tf.keras.layers.MaxPooling2D)]
    assert pools == ["block1_pool", "block2_pool", "block3_pool", "block4_pool"]
    assert model.get_layer("block_5c_act").output_shape[1:3] == (4, 4)  # total stride 16, as the original


def test_vgg16_head_as_the_original():
    plain = create_model(make_spec("vgg", 16, size=32, retain_head=True), 4)
    names = [layer.name for layer in plain.layers]
    assert "block5_pool" in names  # the fifth pool comes with the head
    assert not any(isinstance(layer, tf.keras.layers.Dropout) for layer in plain.layers)  # dropout 0: none
    assert plain.get_layer("fc1").activation.__name__ == "relu" and "fc1_act" not in names
    with_dropout = create_model(make_spec("vgg", 16, size=32, retain_head=True, dropout=0.4), 4)
    rates = [layer.rate for layer in with_dropout.layers if isinstance(layer, tf.keras.layers.Dropout)]
    assert rates == [0.4, 0.4]
