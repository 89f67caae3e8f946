"""Trainable parameter counts at 3x224x224, retain_head, batch norm, no conv bias, 1000 classes.

These are the canonical published counts wherever our definition is the standard one. Trainable only:
BN moving statistics are not parameters. Building these models takes ~1 minute on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest

from kestrel_trainer.models.registry import create_model

from .arithmetic import FAMILIES, expected_count
from .specs import make_spec

pytestmark = pytest.mark.slow


def trainable(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


CANONICAL = [
    # torchvision resnet18..152; resnet 18/34 with use_pooling plus the original's projection shortcut on
    # block_1a (64 -> 64: a 1x1 conv without bias, 64 * 64 = 4,096, and its BN's gamma and beta, 2 * 64 = 128)
    ("resnet", 18, {}, 11_689_512 + 64 * 64 + 2 * 64),
    ("resnet", 34, {}, 21_797_672 + 64 * 64 + 2 * 64),
    ("resnet", 50, {}, 25_557_032),
    ("resnet", 101, {}, 44_549_160),
    ("resnet", 152, {}, 60_192_808),
    # torchvision vgg16_bn: its convs keep their bias, so use_bias=true here
    ("vgg", 16, {"use_bias": True}, 138_365_992),
    # Keras applications' trainable counts (mobilenet v1's 1x1-conv classifier has the Dense's parameters)
    ("mobilenet_v1", None, {}, 4_231_976),
    ("mobilenet_v2", None, {}, 3_504_872),
    # Keras applications; squeeze-excite convs keep their bias there and here
    ("efficientnet_b0", None, {}, 5_288_548),
    ("efficientnet_b1", None, {}, 7_794_184),
    # SqueezeNet 1.0 as published (torchvision squeezenet1_0): no batch norm, conv bias
    ("squeezenet", None, {"use_batch_norm": False, "use_bias": True}, 1_248_424),
]

# vgg16 with BN and no conv bias: vgg16_bn minus its 4,224 conv biases (ours: no single standard definition)
OURS = [("vgg", 16, {}, 138_361_768)]
# googlenet, alexnet and the darknet family: per-layer arithmetic from the published layer tables (arithmetic.py;
# test_param_arithmetic.py checks other sizes, heads and options). At 224 with 1000 classes: googlenet 7,005,832
# (BN, true 5x5 branches, no aux heads; torchvision's uses 3x3 there: 6,624,904), alexnet 230,150,504 (the
# original's template: no pool after conv5, so fc6 reads 14x14x256; torchvision's 61,100,840 pools to 6x6),
# darknet19/53 20,842,376 / 41,609,928 (YOLO9000 / YOLOv3: ~20.8M / ~41.6M), cspdarknet19/53 17,223,560 /
# 27,642,184 (the original's templates; CSPNet's CSPDarknet53 classifier: 27.6M), cspdarknet_tiny 4,142,728.
# alexnet as the original's template always builds it (no BN, conv bias; templates/alexnet.py): 230,150,504.
_AS_BUILT = {"alexnet": {"use_bias": True, "use_batch_norm": False}}
ARITHMETIC = [(arch, n, _AS_BUILT.get(arch, {}),
               expected_count(arch, n, channels=3, size=224, classes=1000, retain_head=True,
                              **_AS_BUILT.get(arch, {"use_bias": False, "use_batch_norm": True})).trainable)
              for arch, n in FAMILIES]


@pytest.mark.parametrize("arch,n,overrides,expected", CANONICAL + OURS + ARITHMETIC,
                         ids=[f"{a}{n or ''}-{e}" for a, n, _, e in CANONICAL + OURS + ARITHMETIC])
def test_trainable_parameters_at_224(arch, n, overrides, expected):
    spec = make_spec(arch, n, size=224, retain_head=True, **overrides)
    assert trainable(create_model(spec, 1000)) == expected
