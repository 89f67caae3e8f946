"""Fixtures for training tests: a small real Fashion-MNIST subset and a tiny spec that trains fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import import_fashion_subset

TINY_SPEC = """\
model_config {{
  arch: "resnet"
  n_layers: 10
  input_image_size: "1,16,16"
  use_batch_norm: true
  use_pooling: true
}}
train_config {{
  train_dataset_path: "{data}/train"
  val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ momentum: 0.9 }} }}
  lr_config {{ cosine {{ learning_rate: 0.05 soft_start: 0.2 min_lr_ratio: 0.01 }} }}
  reg_config {{ type: "L2" scope: "Conv2D,Dense" weight_decay: 0.0001 }}
  batch_size_per_gpu: 16
  n_epochs: {epochs}
  n_workers: 2
  random_seed: 7
  preprocess_mode: "torch"
  enable_random_crop: true
  mixup_alpha: {mixup}
  label_smoothing: 0.1
}}
eval_config {{ eval_dataset_path: "{data}/test" top_k: 3 batch_size: 32 }}
"""


@pytest.fixture(scope="session")
def fashion_subset(tmp_path_factory) -> Path:
    """8 real images per class per split (240 files), imported from the Debian package."""
    out = tmp_path_factory.mktemp("fashion") / "fm"
    return import_fashion_subset(out, per_class=8)


def write_spec(folder: Path, data: Path, epochs: int = 2, mixup: float = 0.0) -> Path:
    path = folder / "spec.txt"
    path.write_text(TINY_SPEC.format(data=data, epochs=epochs, mixup=mixup))
    return path
