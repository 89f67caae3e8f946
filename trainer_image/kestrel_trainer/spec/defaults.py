"""Documented defaults for every spec field, keyed by dotted field path.

The original applies none: an omitted field is proto3's zero. Where the original's documentation gives a
default (its "default" column, not its "typical value" column) we use it: batch_size_per_gpu 32, n_epochs
120, n_workers 10, SGD momentum 0.9, batch-norm momentum 0.9 / epsilon 1e-5 (issue 30; the facts file's
"seed's table"). We record which ones were used, so `kestrel spec show` can mark them. Fields absent from this
table have no default: they are either required for some task (dataset paths, optimizer, learning rate) or
optional by nature.

Learning-rate schedule and optimizer fields the documentation gives no default for take the original's value,
proto3's zero, where that trains (cosine `min_lr_ratio` 0: down to zero; soft_anneal `soft_start` 0 and no
`annealing_points`: no warm-up, no annealing). Where the original's zero would not train (step `step_size`
or `gamma`, soft_anneal `annealing_divider` with points, Adam's betas and epsilon, RMSprop's rho and
epsilon) there is no default: training refuses the spec with a line saying what to write (loader.py,
TRAIN_REQUIRED).
Oneof members (optimizer, lr_config) get their sub-field defaults only when that member is chosen.

Booleans default to false exactly as in the original (a spec that omits `use_pooling` builds the same
network it built there).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kestrel_trainer.spec.families import default_activation

__all__ = ["DEFAULTS", "DEFAULT_N_LAYERS", "DEFAULT_LEAKY_ALPHA", "default_activation"]

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
        "train_config.batch_size_per_gpu": 32,
        "train_config.n_epochs": 120,
        "train_config.n_workers": 10,
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
        "train_config.optimizer.sgd.momentum": 0.9,  # the documentation's default (the original's code: 0)
        "train_config.optimizer.sgd.nesterov": False,
        "train_config.optimizer.adam.lr": 0.001,
        "train_config.optimizer.adam.decay": 0.0,
        "train_config.optimizer.rmsprop.lr": 0.001,
        "train_config.optimizer.rmsprop.decay": 0.0,
        "train_config.lr_config.soft_anneal.soft_start": 0.0,
        "train_config.lr_config.cosine.min_lr_ratio": 0.0,
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


DEFAULT_LEAKY_ALPHA = 0.1
