"""Documented defaults for every spec field, keyed by dotted field path.

The original applies none (proto3 zeros, so an omitted `batch_norm_config` meant momentum 0), which
is why its own sample specs misbehave. We fill these instead and record which ones were used, so
`kestrel spec show` can mark them. Fields absent from this table have no default: they are either
required for some task (dataset paths, optimizer, learning rate) or optional by nature.
Oneof members (optimizer, lr_config) get their sub-field defaults only when that member is chosen.

Booleans default to false exactly as in the original (a spec that omits `use_pooling` builds the same
network it built there); numbers whose proto3 zero is unusable (momentum 0, top_k 0, batch size 0)
get a working value instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        # model_config
        "model_config.arch": "resnet",
        "model_config.input_image_size": "3,224,224",
        # n_layers: per family, see DEFAULT_N_LAYERS
        "model_config.retain_head": False,
        "model_config.use_batch_norm": False,
        "model_config.use_bias": False,
        "model_config.use_pooling": False,
        "model_config.all_projections": False,
        "model_config.freeze_bn": False,
        "model_config.dropout": 0.0,
        "model_config.resize_interpolation_method": "BILINEAR",
        "model_config.batch_norm_config.momentum": 0.9,
        "model_config.batch_norm_config.epsilon": 1e-5,
        # activation_type: per family, see DEFAULT_ACTIVATION
        # train_config
        "train_config.pretrained_model_path": "",
        "train_config.batch_size_per_gpu": 64,
        "train_config.n_epochs": 80,
        "train_config.n_workers": 8,
        "train_config.random_seed": 42,
        "train_config.enable_random_crop": False,
        "train_config.label_smoothing": 0.0,
        "train_config.preprocess_mode": "caffe",
        "train_config.enable_center_crop": False,
        "train_config.enable_color_augmentation": False,
        "train_config.mixup_alpha": 0.0,
        "train_config.disable_horizontal_flip": False,
        "train_config.reg_config.type": "None",  # the original: no reg_config, no regularization
        "train_config.reg_config.scope": "Conv2D,Dense",
        "train_config.reg_config.weight_decay": 5e-5,
        "train_config.optimizer.sgd.lr": 0.01,
        "train_config.optimizer.sgd.decay": 0.0,
        "train_config.optimizer.sgd.momentum": 0.9,
        "train_config.optimizer.sgd.nesterov": False,
        "train_config.optimizer.adam.lr": 0.001,
        "train_config.optimizer.adam.beta_1": 0.9,
        "train_config.optimizer.adam.beta_2": 0.999,
        "train_config.optimizer.adam.epsilon": 1e-7,
        "train_config.optimizer.adam.decay": 0.0,
        "train_config.optimizer.rmsprop.lr": 0.001,
        "train_config.optimizer.rmsprop.rho": 0.9,
        "train_config.optimizer.rmsprop.epsilon": 1e-7,
        "train_config.optimizer.rmsprop.decay": 0.0,
        "train_config.lr_config.step.step_size": 10,
        "train_config.lr_config.step.gamma": 0.1,
        "train_config.lr_config.soft_anneal.soft_start": 0.056,
        "train_config.lr_config.soft_anneal.annealing_divider": 10.0,
        "train_config.lr_config.soft_anneal.annealing_points": (0.3, 0.6, 0.8),
        "train_config.lr_config.cosine.min_lr_ratio": 0.01,
        "train_config.lr_config.cosine.soft_start": 0.0,
        "train_config.class_weighting": "none",
        "train_config.torch_std": "original",
        "train_config.visualizer.enabled": False,
        "train_config.visualizer.num_images": 3,
        "train_config.visualizer.weight_histograms": False,
        # eval_config
        "eval_config.top_k": 5,
        "eval_config.batch_size": 256,
        "eval_config.n_workers": 8,
        "eval_config.enable_center_crop": False,
    }
)

DEFAULT_N_LAYERS: Mapping[str, int] = MappingProxyType(
    {"resnet": 18, "vgg": 16, "darknet": 19, "cspdarknet": 19}
)


def default_activation(arch: str) -> str:
    """The family's own activation when the spec names none (what its published definition uses)."""
    if arch.startswith("efficientnet"):
        return "swish"
    if arch in ("mobilenet_v1", "mobilenet_v2"):
        return "relu6"
    if arch in ("darknet", "cspdarknet", "cspdarknet_tiny"):
        return "leaky_relu"
    return "relu"


DEFAULT_LEAKY_ALPHA = 0.1
