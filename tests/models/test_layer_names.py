"""Layer names are a public API (weights load by name, pruning and model parallelism use them)."""

from __future__ import annotations

import pytest

from kestrel_trainer.models.registry import create_model

from .specs import make_spec

SNAPSHOT = {
    ("resnet", 18): ["conv1", "bn_conv1", "pool1", "block_1a_conv_1", "block_1a_bn_1", "block_1a_conv_shortcut",
                     "block_2a_conv_shortcut",
                     "block_2a_bn_shortcut", "block_4b_conv_2", "avg_pool", "flatten", "predictions"],
    ("resnet", 152): ["block_3aj_conv_3"],  # 36 blocks: letters go a..z, aa..aj like the original
    ("vgg", 16): ["block_1a_conv_1", "block_5c_bn_1", "block4_pool"],
    ("mobilenet_v1", None): ["conv1", "conv_dw_1", "conv_pw_13_bn"],
    ("mobilenet_v2", None): ["Conv1", "expanded_conv_depthwise", "block_16_project_BN", "Conv_1"],
    ("efficientnet_b0", None): ["stem_conv", "block1a_dwconv", "block2b_se_reduce", "block7a_project_bn",
                                "top_conv"],
    ("googlenet", None): ["conv2_reduce", "inception_3a_5x5", "inception_5b_pool_proj"],
    ("squeezenet", None): ["fire2_squeeze_conv", "fire9_expand_conv3x3"],
    ("darknet", 53): ["conv1", "conv6", "b5_conv4_2", "b5_add4"],
    # the original's names (its open-source cspdarknet.py)
    ("cspdarknet", 53): ["conv4_1", "conv4_2", "b3_conv8_2", "b3_add8", "b3_partial_trans", "b3_concat",
                         "b5_final_trans"],
    ("cspdarknet", 19): ["b1_conv1", "b2_conv1", "b2_part1", "b2_part2", "b4_conv5", "b5_partial_trans",
                         "b5_final_trans"],
    ("cspdarknet_tiny", None): ["conv2", "b4_conv4", "b5_conv1"],
    ("alexnet", None): ["conv1", "pool1", "pool2", "conv5"],
}


@pytest.mark.parametrize("key", list(SNAPSHOT), ids=lambda k: f"{k[0]}{k[1] or ''}")
def test_layer_names_are_stable(key):
    arch, n = key
    names = {layer.name for layer in create_model(make_spec(arch, n, size=32), 4).layers}
    missing = [name for name in SNAPSHOT[key] if name not in names]
    assert not missing
