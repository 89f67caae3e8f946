"""Malformed specs: each gives exit code 2, one line naming the right line or field, no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

GOOD_TRAIN = """\
model_config {
  arch: "resnet"
  n_layers: 18
  input_image_size: "3,32,32"
}
train_config {
  train_dataset_path: "/data/train"
  val_dataset_path: "/data/val"
  optimizer { sgd { lr: 0.01 momentum: 0.9 } }
  lr_config { cosine { learning_rate: 0.05 min_lr_ratio: 0.01 soft_start: 0.1 } }
  reg_config { type: "L2" scope: "Conv2D,Dense" weight_decay: 0.00005 }
  batch_size_per_gpu: 32
  n_epochs: 2
}
eval_config { eval_dataset_path: "/data/test" top_k: 1 }
"""


def _replace(old: str, new: str) -> str:
    assert old in GOOD_TRAIN, old
    return GOOD_TRAIN.replace(old, new)


# (id, spec text, task, substrings the one-line message must contain)
CASES = [
    ("syntax-missing-brace", "model_config {\n  arch: \"resnet\"\n", None, [":2:", "Expected \"}\""]),
    ("syntax-bad-colon", 'model_config {\n  arch "resnet"\n}\n', None, [":2:"]),
    ("unknown-field-typo", _replace('n_layers: 18', 'n_layer: 18'), None,
     [":3:", 'model_config has no field "n_layer"', 'did you mean "n_layers"']),
    ("unknown-top-level", GOOD_TRAIN + "training_config {}\n", None, [":16:", 'no field "training_config"',
                                                                      'did you mean "train_config"']),
    ("unknown-nested", _replace("lr: 0.01 momentum", "lr: 0.01 momentun"), None,
     [":9:", "train_config.optimizer.sgd", '"momentun"', 'did you mean "momentum"']),
    ("wrong-type-string-for-int", _replace("n_layers: 18", 'n_layers: "18"'), None,
     [":3:", "model_config.n_layers: ", "integer"]),
    ("wrong-type-float-for-int", _replace("n_epochs: 2", "n_epochs: 2.5"), None,
     [":13:", "train_config.n_epochs: ", "integer"]),
    ("negative-uint", _replace("batch_size_per_gpu: 32", "batch_size_per_gpu: -4"), None, [":12:"]),
    ("wrong-type-bool", _replace('input_image_size: "3,32,32"', 'input_image_size: "3,32,32"\n  use_bias: maybe'),
     None, [":5:", "model_config.use_bias: ", "use_bias: maybe", "Expected \"true\" or \"false\""]),
    ("bad-enum", _replace('input_image_size: "3,32,32"',
                          'input_image_size: "3,32,32"\n  resize_interpolation_method: NEAREST'), None,
     [":5:", "model_config.resize_interpolation_method: NEAREST is not one of BILINEAR, BICUBIC"]),
    ("bad-arch", _replace('arch: "resnet"', 'arch: "resnett"'), None,
     [":2:", "model_config.arch", '"resnett"', 'did you mean "resnet"']),
    ("bad-arch-nlayers-pair", _replace("n_layers: 18", "n_layers: 20"), None,
     [":3:", "model_config.n_layers", "20 is not valid for resnet", "10, 18, 34, 50, 101, 152, 200"]),
    ("vgg-18", _replace('arch: "resnet"', 'arch: "vgg"'), None, ["model_config.n_layers", "16, 19"]),
    ("channels-2", _replace('"3,32,32"', '"2,32,32"'), None, [":4:", "input_image_size", "C=2", "1 (grayscale)"]),
    ("image-too-small", _replace('"3,32,32"', '"3,8,32"'), None, ["input_image_size", ">= 16"]),
    ("image-size-format", _replace('"3,32,32"', '"3x32x32"'), None, ["input_image_size", '"C,H,W"']),
    ("freeze-unknown-block", _replace("n_layers: 18", "n_layers: 18\n  freeze_blocks: 7"), None,
     [":4:", "model_config.freeze_blocks[0]", "block 7 does not exist in resnet", "0..4"]),
    ("missing-optimizer", _replace("  optimizer { sgd { lr: 0.01 momentum: 0.9 } }\n", ""), "train",
     ["train_config.optimizer", "required for training"]),
    ("missing-lr-config", _replace(
        "  lr_config { cosine { learning_rate: 0.05 min_lr_ratio: 0.01 soft_start: 0.1 } }\n", ""), "train",
     ["train_config.lr_config", "required for training"]),
    ("missing-learning-rate", _replace("cosine { learning_rate: 0.05 ", "cosine { "), "train",
     [":10:", "train_config.lr_config.cosine.learning_rate", "required"]),
    ("zero-learning-rate", _replace("learning_rate: 0.05", "learning_rate: 0.0"), "train",
     ["train_config.lr_config.cosine.learning_rate", "out of range", "(0.0, inf)"]),
    ("missing-train-dataset", _replace('  train_dataset_path: "/data/train"\n', ""), "train",
     ["train_config.train_dataset_path", "required for training"]),
    ("missing-train-section", 'model_config { arch: "resnet" }\n', "train",
     ["train_config.train_dataset_path", "required for training"]),
    ("missing-eval-dataset", _replace('eval_config { eval_dataset_path: "/data/test" top_k: 1 }', ""), "evaluate",
     ["eval_config.eval_dataset_path", "required for evaluate"]),
    ("reg-type", _replace('type: "L2"', 'type: "L3"'), None, [":11:", "train_config.reg_config.type", '"L3"']),
    ("reg-scope", _replace('scope: "Conv2D,Dense"', 'scope: "Conv2D,Dens"'), None,
     ["train_config.reg_config.scope", '"Dens"', 'did you mean "Dense"']),
    ("weight-decay-range", _replace("weight_decay: 0.00005", "weight_decay: 1.5"), None,
     ["train_config.reg_config.weight_decay", "1.5 is out of range", "(0.0, 1.0)"]),
    ("image-mean-keys", _replace("n_epochs: 2", 'n_epochs: 2\n  image_mean { key: "l" value: 117.0 }'), None,
     [":14:", "train_config.image_mean", "C=3", "b, g, r"]),
    ("image-mean-gray-keys", _replace('"3,32,32"', '"1,32,32"').replace(
        "n_epochs: 2", 'n_epochs: 2\n  image_mean { key: "r" value: 117.0 }'), None,
     ["train_config.image_mean", "C=1", "give exactly l"]),
    ("top-k-zero", _replace("top_k: 1", "top_k: 0"), None, [":15:", "eval_config.top_k", "out of range"]),
    ("model-parallelism-zero", _replace("n_epochs: 2", "n_epochs: 2\n  model_parallelism: 0.5\n  model_parallelism: 0"),
     None, ["train_config.model_parallelism[1]", "out of range"]),
    ("soft-anneal-order", _replace(
        "cosine { learning_rate: 0.05 min_lr_ratio: 0.01 soft_start: 0.1 }",
        "soft_anneal { learning_rate: 0.05 soft_start: 0.1 annealing_points: 0.6 annealing_points: 0.3 }"),
     None, ["train_config.lr_config.soft_anneal.annealing_points[1]", "increasing"]),
    ("soft-anneal-before-start", _replace(
        "cosine { learning_rate: 0.05 min_lr_ratio: 0.01 soft_start: 0.1 }",
        "soft_anneal { learning_rate: 0.05 soft_start: 0.4 annealing_points: 0.3 }"),
     None, ["annealing_points[0]", "(soft_start=0.4, 1)"]),
    ("preprocess-mode", _replace("n_epochs: 2", 'n_epochs: 2\n  preprocess_mode: "pytorch"'), None,
     [":14:", "train_config.preprocess_mode", '"pytorch"', "caffe, torch, tf"]),
    ("bn-momentum", _replace('"3,32,32"', '"3,32,32"\n  batch_norm_config { momentum: 1.5 }'), None,
     [":5:", "model_config.batch_norm_config.momentum", "1.5"]),
    ("activation-type", _replace('"3,32,32"', '"3,32,32"\n  activation { activation_type: "gelu" }'), None,
     [":5:", "model_config.activation.activation_type", '"gelu"', "relu, relu6, swish, mish, leaky_relu"]),
    ("label-smoothing", _replace("n_epochs: 2", "n_epochs: 2\n  label_smoothing: 1.0"), None,
     ["train_config.label_smoothing", "out of range"]),
    ("sgd-momentum", _replace("momentum: 0.9 }", "momentum: 1.0 }"), None,
     [":9:", "train_config.optimizer.sgd.momentum", "[0.0, 1.0)"]),
    ("step-size", _replace("cosine { learning_rate: 0.05 min_lr_ratio: 0.01 soft_start: 0.1 }",
                           "step { learning_rate: 0.05 step_size: 150 }"), None,
     ["train_config.lr_config.step.step_size", "150 is out of range", "[1, 100]"]),
    # unset fields whose protobuf zero would not train (the original's value): refused for training with what to write
    ("step-without-step-size", _replace("cosine { learning_rate: 0.05 min_lr_ratio: 0.01 soft_start: 0.1 }",
                                        "step { learning_rate: 0.05 gamma: 0.1 }"), "train",
     [":10:", "train_config.lr_config.step.step_size", "step_size: 10"]),
    ("step-without-gamma", _replace("cosine { learning_rate: 0.05 min_lr_ratio: 0.01 soft_start: 0.1 }",
                                    "step { learning_rate: 0.05 step_size: 10 }"), "train",
     [":10:", "train_config.lr_config.step.gamma", "gamma: 0.1"]),
    ("soft-anneal-points-without-divider", _replace(
        "cosine { learning_rate: 0.05 min_lr_ratio: 0.01 soft_start: 0.1 }",
        "soft_anneal { learning_rate: 0.05 annealing_points: 0.5 }"), "train",
     [":10:", "train_config.lr_config.soft_anneal.annealing_divider", "annealing_divider: 10"]),
    ("adam-without-betas", _replace("sgd { lr: 0.01 momentum: 0.9 }", "adam { lr: 0.01 epsilon: 1e-7 }"), "train",
     [":9:", "train_config.optimizer.adam.beta_1", "beta_1: 0.9", "beta_1: 0"]),
    ("rmsprop-without-epsilon", _replace("sgd { lr: 0.01 momentum: 0.9 }", "rmsprop { rho: 0.9 }"), "train",
     [":9:", "train_config.optimizer.rmsprop.epsilon", "epsilon: 1e-7"]),
    ("byom", _replace('arch: "resnet"', 'arch: "resnet"\n  byom_model: "/m.tltb"'), None,
     ["model_config.byom_model", "not supported"]),
]


@pytest.mark.parametrize("name,text,task,expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_spec_is_one_clear_line(tmp_path, name, text, task, expected):
    path = tmp_path / "spec.txt"
    path.write_text(textwrap.dedent(text))
    cmd = [sys.executable, "-m", "kestrel_trainer.cli.main", "spec", "check", "-e", str(path)]
    if task:
        cmd += ["--task", task]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    message = lines[0]
    assert message.startswith(f"kestrel: error: {path}"), message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_good_spec_is_valid_for_every_task(tmp_path):
    path = tmp_path / "spec.txt"
    path.write_text(GOOD_TRAIN)
    for task in ("train", "evaluate", "inference", "export", "prune"):
        proc = subprocess.run(
            [sys.executable, "-m", "kestrel_trainer.cli.main", "spec", "check", "-e", str(path), "--task", task],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"valid for {task}" in proc.stdout


def test_missing_file_and_directory(tmp_path):
    for target, words in ((tmp_path / "nope.txt", "not found"), (tmp_path, "is a directory")):
        proc = subprocess.run(
            [sys.executable, "-m", "kestrel_trainer.cli.main", "spec", "check", "-e", str(target)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2
        assert words in proc.stderr and "Traceback" not in proc.stderr
