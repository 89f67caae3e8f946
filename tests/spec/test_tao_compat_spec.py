"""Spec fields of the original that used to fail, and the Kestrel option that restores per-channel torch std."""

from __future__ import annotations

import pytest

from kestrel_trainer.errors import SpecError
from kestrel_trainer.spec import parse_spec_text

BASE = """model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" }}
train_config {{
  train_dataset_path: "t" val_dataset_path: "v"
  optimizer {{ sgd {{ }} }}
  lr_config {{ step {{ learning_rate: 0.1 step_size: 10 gamma: 0.1 }} }}
  preprocess_mode: "torch"
  {extra}
}}
"""


def test_wandb_mode_parses_as_in_the_original():
    spec = parse_spec_text(BASE.format(extra='visualizer { wandb_config { enabled: true mode: OFFLINE } }'),
                           task="train")
    assert spec.fields["train_config.visualizer.wandb_config.mode"] == "OFFLINE"
    # visualizer.enabled is false: W&B is not contacted, and the warning says why
    assert any("wandb_config: has no effect: W&B logging needs visualizer.enabled" in w for w in spec.warnings)


def test_torch_std_is_the_originals_unless_per_channel_is_asked():
    assert parse_spec_text(BASE.format(extra=""), task="train").train.torch_std == "original"
    spec = parse_spec_text(BASE.format(extra='torch_std: "per_channel"'), task="train")
    assert spec.train.torch_std == "per_channel"
    with pytest.raises(SpecError, match=r'<string>:7: train_config.torch_std: "imagenet" is not allowed; allowed: '
                                        r"original, per_channel"):
        parse_spec_text(BASE.format(extra='torch_std: "ImageNet"'), task="train")


def test_clearml_and_a_disabled_wandb_config_are_ignored_with_a_warning_naming_the_line():
    extra = 'visualizer {\n    wandb_config { enabled: false project: "p" }\n    clearml_config { project: "c" }\n  }'
    spec = parse_spec_text(BASE.format(extra=extra), source="s.txt", task="train")
    assert ("s.txt:8: train_config.visualizer.wandb_config: has no effect: W&B logging needs visualizer.enabled "
            "and wandb_config.enabled (docs/tracking.md)") in spec.warnings
    assert ("s.txt:9: train_config.visualizer.clearml_config: is ignored: ClearML logging is not implemented; "
            "Kestrel logs to MLflow (MLFLOW_TRACKING_URI) and W&B (wandb_config), docs/tracking.md") in spec.warnings
