"""Parameter counts of googlenet, alexnet and the darknet family equal per-layer arithmetic (tests/models/arithmetic.py)
written from the published layer tables, over small inputs, both heads, with and without conv bias and batch norm,
and a few class counts: total, trainable and non-trainable (BN moving statistics) separately."""

from __future__ import annotations

import numpy as np
import pytest

from kestrel_trainer.models.registry import create_model

from .arithmetic import FAMILIES, expected_count
from .specs import make_spec

CONFIGS = [
    # channels, size, classes, retain_head, use_bias, use_batch_norm (test_param_counts: 224, 1000 classes)
    (3, 32, 10, False, False, True),
    (1, 64, 2, True, True, False),
]


@pytest.mark.parametrize("arch,n", list(FAMILIES), ids=[f"{a}{n or ''}" for a, n in FAMILIES])
@pytest.mark.parametrize("channels,size,classes,retain_head,use_bias,use_batch_norm", CONFIGS,
                         ids=["rgb32-default-head", "grey64-own-head-bias-no-bn"])
def test_parameter_counts_equal_per_layer_arithmetic(arch, n, channels, size, classes, retain_head, use_bias,
                                                     use_batch_norm):
    spec = make_spec(arch, n, channels=channels, size=size, retain_head=retain_head, use_bias=use_bias,
                     use_batch_norm=use_batch_norm)
    model = create_model(spec, classes)
    expected = expected_count(arch, n, channels=channels, size=size, classes=classes, retain_head=retain_head,
                              use_bias=use_bias, use_batch_norm=use_batch_norm)
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    non_trainable = int(sum(np.prod(w.shape) for w in model.non_trainable_weights))
    assert (trainable, non_trainable) == (expected.trainable, expected.non_trainable)
    assert model.count_params() == expected.total
