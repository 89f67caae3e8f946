"""Helpers for data tests: tiny generated image folders and specs built directly as dataclasses."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from types import MappingProxyType
from typing import Optional

import numpy as np
from PIL import Image

from kestrel_trainer.spec.types import (
    ActivationSpec,
    BatchNormSpec,
    ModelSpec,
    RegSpec,
    SgdSpec,
    StepLRSpec,
    TrainSpec,
    VisualizerSpec,
)


def model_spec(c: int = 3, h: int = 16, w: int = 16, method: str = "bilinear") -> ModelSpec:
    return ModelSpec(
        arch="resnet", n_layers=18, input_channels=c, input_height=h, input_width=w, retain_head=False,
        use_batch_norm=True, use_bias=False, use_pooling=True, all_projections=True, freeze_bn=False,
        freeze_blocks=(), dropout=0.0, resize_interpolation_method=method,
        batch_norm=BatchNormSpec(0.9, 1e-5), activation=ActivationSpec("relu"),
    )


def train_spec(**overrides) -> TrainSpec:
    base = TrainSpec(
        train_dataset_path="", val_dataset_path="", pretrained_model_path="",
        optimizer=SgdSpec(lr=0.01, decay=0.0, momentum=0.9, nesterov=False), batch_size_per_gpu=4,
        n_epochs=1, n_workers=2, reg=RegSpec("None", (), 0.0), lr=StepLRSpec(0.01, 10, 0.1),
        random_seed=42, enable_random_crop=False, label_smoothing=0.0, preprocess_mode="caffe",
        enable_center_crop=False, enable_color_augmentation=False, mixup_alpha=0.0,
        model_parallelism=(), image_mean=MappingProxyType({}), disable_horizontal_flip=True,
        visualizer=VisualizerSpec(False, 0, False),
    )
    return replace(base, **overrides)


def pipeline_options(*, training: bool, batch_size: int, model: Optional[ModelSpec] = None,
                     center_crop: Optional[bool] = None, **kw):
    """PipelineOptions from these specs: keywords naming TrainSpec fields (enable_random_crop, n_epochs, ...)
    go into train_spec, the others (with_paths, seed) replace option fields."""
    from kestrel_trainer.data.pipeline import PipelineOptions

    spec_fields = {f.name for f in fields(TrainSpec)}
    ts = train_spec(**{k: v for k, v in kw.items() if k in spec_fields})
    ms = model or model_spec(h=8, w=8)
    options = (PipelineOptions.for_training(ms, ts, batch_size) if training
               else PipelineOptions.for_evaluation(ms, ts, batch_size, center_crop))
    return replace(options, **{k: v for k, v in kw.items() if k not in spec_fields})


def write_image(path: str, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_folder(root: str, classes: dict[str, int], size=(12, 10), ext=".png", seed=0) -> list[str]:
    """root/<class>/<i>.<ext> with random RGB images of size (h, w); returns the paths written."""
    rng = np.random.default_rng(seed)
    paths = []
    for name, n in classes.items():
        for i in range(n):
            arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            paths.append(write_image(os.path.join(root, name, f"{i:03d}{ext}"), arr))
    return paths


def fashion_mosaic(height: int, width: int, tile: int = 112, seed: int = 0) -> np.ndarray:
    """A height x width RGB photo-like image from real pixels: Fashion-MNIST images (the Debian package)
    upscaled (bicubic) to tile x tile, tinted, side by side. Sharp edges and smooth areas, as in photos."""
    from kestrel_trainer.data.datasets import fashion_mnist as fm

    images = fm.load()["test_images"]
    rng = np.random.default_rng(seed)
    rows, cols = -(-height // tile), -(-width // tile)
    out = np.zeros((rows * tile, cols * tile, 3), np.float32)
    for i in range(rows):
        for j in range(cols):
            grey = np.asarray(Image.fromarray(images[rng.integers(len(images))]).resize((tile, tile), Image.BICUBIC),
                              np.float32)
            tint = rng.uniform(0.3, 1.0, size=3)
            out[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile] = grey[..., None] * tint + rng.uniform(0, 80, 3)
    return np.clip(out[:height, :width], 0, 255).astype(np.uint8)
