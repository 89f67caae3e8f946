"""Spec builders for model tests: ModelSpec dataclasses built directly (no spec file needed)."""

from __future__ import annotations

from dataclasses import replace

from kestrel_trainer.spec.defaults import default_activation
from kestrel_trainer.spec.types import ActivationSpec, BatchNormSpec, ModelSpec


def make_spec(arch: str, n_layers=None, *, channels: int = 3, size: int = 64, **overrides) -> ModelSpec:
    act = default_activation(arch)
    spec = ModelSpec(
        arch=arch,
        n_layers=n_layers,
        input_channels=channels,
        input_height=size,
        input_width=size,
        retain_head=False,
        use_batch_norm=True,
        use_bias=False,
        use_pooling=True,
        all_projections=False,
        freeze_bn=False,
        freeze_blocks=(),
        dropout=0.0,
        resize_interpolation_method="bilinear",
        batch_norm=BatchNormSpec(momentum=0.9, epsilon=1e-5),
        activation=ActivationSpec(act, {"alpha": 0.1} if act == "leaky_relu" else {}),
    )
    return replace(spec, **overrides)


ALL_VARIANTS = [
    *[("resnet", n) for n in (10, 18, 34, 50, 101, 152, 200)],
    ("vgg", 16), ("vgg", 19),
    ("alexnet", None), ("googlenet", None), ("mobilenet_v1", None), ("mobilenet_v2", None),
    ("squeezenet", None),
    ("darknet", 19), ("darknet", 53), ("cspdarknet", 19), ("cspdarknet", 53), ("cspdarknet_tiny", None),
    *[(f"efficientnet_b{i}", None) for i in range(8)],
]


