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


def test_a_clearml_and_a_wandb_config_without_effect_are_warnings_naming_the_line():
    extra = 'visualizer {\n    wandb_config { enabled: false project: "p" }\n    clearml_config { project: "c" }\n  }'
    spec = parse_spec_text(BASE.format(extra=extra), source="s.txt", task="train")
    assert ("s.txt:8: train_config.visualizer.wandb_config: has no effect: W&B logging needs visualizer.enabled "
            "and wandb_config.enabled (docs/tracking.md)") in spec.warnings
    assert ("s.txt:9: train_config.visualizer.clearml_config: has no effect: ClearML logging needs "
            "visualizer.enabled (docs/tracking.md)") in spec.warnings
    assert not spec.train.visualizer.clearml


def test_clearml_config_takes_effect_with_visualizer_enabled_and_its_resume_fields_are_warnings():
    extra = ('visualizer {\n    enabled: true\n    clearml_config {\n      project: "c"\n'
             '      continue_last_task: true\n    }\n  }')
    spec = parse_spec_text(BASE.format(extra=extra), source="s.txt", task="train")
    assert spec.train.visualizer.clearml
    assert spec.fields["train_config.visualizer.clearml_config.project"] == "c"
    assert [w for w in spec.warnings if "clearml" in w] == [
        "s.txt:11: train_config.visualizer.clearml_config.continue_last_task: is not used: a resumed run (the same "
        "results folder) continues its ClearML task (RESULTS/tracking.json), a new folder starts a new task"]
    empty = parse_spec_text(BASE.format(extra="visualizer {\n    enabled: true\n    clearml_config { }\n  }"),
                            task="train")
    assert empty.train.visualizer.clearml and not empty.warnings  # an empty clearml_config: ClearML's defaults
    assert not parse_spec_text(BASE.format(extra="visualizer { enabled: true }"), task="train").train.visualizer.clearml
