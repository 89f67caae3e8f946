"""Issue 30, spec files: what the original accepts (text_format.Merge), its documented defaults, what it does
with fields left unset, and options a family does not take. Expected values come from protobuf's own
text_format.Merge, the original's documentation (issue 30) and the schedule formulas of the facts file."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from google.protobuf import text_format

from kestrel_trainer.errors import SpecError
from kestrel_trainer.spec import load_spec, parse_spec_text
from kestrel_trainer.spec.proto import experiment_pb2

TRAIN = """model_config {{ arch: "resnet" n_layers: 10 input_image_size: "3,32,32" {model} }}
train_config {{
  train_dataset_path: "t" val_dataset_path: "v"
  {train}
}}
"""
SGD_COSINE = ("optimizer { sgd { lr: 0.1 momentum: 0.9 } }\n"
              "  lr_config { cosine { learning_rate: 0.1 } }")


def _spec(model: str = "", train: str = SGD_COSINE, task: str = "train"):
    return parse_spec_text(TRAIN.format(model=model, train=train), source="s.txt", task=task)


# -- 1. text_format.Merge ---------------------------------------------------------------------------------------

def test_a_scalar_written_twice_keeps_the_last_value_with_a_warning_naming_both_lines():
    text = TRAIN.format(model="", train=SGD_COSINE + "\n  n_epochs: 3\n  n_epochs: 7")
    oracle = experiment_pb2.Experiment()
    text_format.Merge(text, oracle)  # what the original does with the same text
    spec = parse_spec_text(text, source="s.txt", task="train")
    assert spec.train.n_epochs == oracle.train_config.n_epochs == 7
    (warning,) = [w for w in spec.warnings if "n_epochs" in w]
    assert warning.startswith("s.txt:7: train_config.n_epochs: written twice (lines 6 and 7)")


def test_a_second_optimizer_replaces_the_first_as_merge_does():
    train = ("optimizer {\n    sgd { lr: 0.1 momentum: 0.5 }\n    adam { lr: 0.2 beta_1: 0.8 beta_2: 0.95 "
             "epsilon: 1e-6 }\n  }\n  lr_config { cosine { learning_rate: 0.1 } }")
    text = TRAIN.format(model="", train=train)
    oracle = experiment_pb2.Experiment()
    text_format.Merge(text, oracle)
    assert oracle.train_config.optimizer.WhichOneof("optim") == "adam"
    spec = parse_spec_text(text, source="s.txt", task="train")
    assert spec.train.optimizer.name == "adam"
    assert (spec.train.optimizer.beta_1, spec.train.optimizer.beta_2) == pytest.approx(
        (oracle.train_config.optimizer.adam.beta_1, oracle.train_config.optimizer.adam.beta_2))
    (warning,) = [w for w in spec.warnings if "replaces" in w]
    assert warning.startswith("s.txt:6: train_config.optimizer: adam (line 6) replaces sgd (line 5)")


def test_a_section_written_twice_merges_and_only_real_duplicates_warn():
    text = TRAIN.format(model="", train=SGD_COSINE) + "train_config { n_epochs: 4 }\ntrain_config { n_workers: 3 }\n"
    spec = parse_spec_text(text, source="s.txt", task="train")
    assert (spec.train.n_epochs, spec.train.n_workers, spec.train.train_dataset_path) == (4, 3, "t")
    assert not [w for w in spec.warnings if "written twice" in w or "replaces" in w]


def test_a_spec_with_a_field_written_twice_passes_spec_check(tmp_path):
    path = tmp_path / "twice.txt"
    path.write_text(TRAIN.format(model='\n  n_layers: 18', train=SGD_COSINE))
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "spec", "check", "-e", str(path),
                           "--task", "train"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "resnet18" in proc.stdout  # the last value wins
    assert f"warning: {path}:2: model_config.n_layers: written twice (lines 1 and 2)" in proc.stderr


# -- 2. defaults ------------------------------------------------------------------------------------------------

def test_documented_defaults_of_the_original():
    spec = _spec()
    # the original's documentation, "default" column (issue 30)
    assert (spec.train.batch_size_per_gpu, spec.train.n_epochs, spec.train.n_workers) == (32, 120, 10)
    assert {"train_config.batch_size_per_gpu", "train_config.n_epochs", "train_config.n_workers"} <= spec.defaults_used
    # documented: SGD momentum 0.9, batch-norm momentum 0.9 / epsilon 1e-5
    assert _spec(train=SGD_COSINE.replace(" momentum: 0.9", "")).train.optimizer.momentum == 0.9
    assert (spec.model.batch_norm.momentum, spec.model.batch_norm.epsilon) == (0.9, 1e-5)


def test_cosine_without_min_lr_ratio_decays_to_zero_as_the_original(conformance_specs):
    # the original's own sample omits min_lr_ratio: protobuf's 0, so lo = 0 in the facts file's formula
    spec = load_spec(next(p for p in conformance_specs if p.name == "resnet101_imagenet_cosine.txt"), task="train")
    lr = spec.train.lr
    assert lr.min_lr_ratio == 0.0
    from kestrel_trainer.train.schedules import lr_at

    total = 1000
    assert lr_at(lr, total, total) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(lr, total // 2, total) == pytest.approx(0.04 * (1 + math.cos(math.pi / 2)) / 2)


def test_soft_anneal_without_points_keeps_the_base_rate_as_the_original():
    spec = _spec(train="optimizer { sgd { } }\n  lr_config { soft_anneal { learning_rate: 0.05 } }")
    lr = spec.train.lr
    assert (lr.soft_start, lr.annealing_points) == (0.0, ())  # protobuf's zeros: no warm-up, no annealing
    from kestrel_trainer.train.schedules import lr_at

    assert [lr_at(lr, step, 100) for step in (0, 50, 99)] == pytest.approx([0.05, 0.05, 0.05])


@pytest.mark.parametrize("train,line,field,hint", [
    ("optimizer { sgd { } }\n  lr_config { step { learning_rate: 0.1 gamma: 0.1 } }", 5,
     "train_config.lr_config.step.step_size", "step_size: 10"),
    ("optimizer { sgd { } }\n  lr_config { step { learning_rate: 0.1 step_size: 10 } }", 5,
     "train_config.lr_config.step.gamma", "gamma: 0.1"),
    ("optimizer { adam { epsilon: 1e-7 } }\n  lr_config { cosine { learning_rate: 0.1 } }", 4,
     "train_config.optimizer.adam.beta_1", "beta_1: 0.9"),
])
def test_unset_fields_whose_zero_would_not_train_are_refused_with_what_to_write(train, line, field, hint):
    with pytest.raises(SpecError) as err:
        _spec(train=train)
    assert f"s.txt:{line}: {field}: is not set and has no default" in str(err.value) and hint in str(err.value)
    spec = _spec(train=train, task="inference")  # other tasks do not read them
    assert not [w for w in spec.warnings if field in w]
    assert [w for w in _spec(train=train, task=None).warnings if field in w]  # `spec check` says so


def test_adam_with_betas_written_as_the_original_reads_them():
    spec = _spec(train="optimizer { adam { beta_1: 0 beta_2: 0 epsilon: 1e-7 } }\n"
                       "  lr_config { cosine { learning_rate: 0.1 } }")
    assert (spec.train.optimizer.beta_1, spec.train.optimizer.beta_2) == (0.0, 0.0)


# -- 4. NO_REG, n_layers 0, errors that name the field ----------------------------------------------------------

def test_no_reg_is_none_and_n_layers_zero_is_the_default_depth():
    spec = _spec(model="", train=SGD_COSINE + '\n  reg_config { type: "NO_REG" }')
    assert spec.train.reg.type == "None"
    spec = parse_spec_text('model_config { arch: "resnet" n_layers: 0 }')
    assert spec.model.name == "resnet18"  # the original: `n_layers if n_layers else 18`


def test_enum_and_type_errors_name_the_dotted_field():
    with pytest.raises(SpecError, match=r"^s\.txt:1:\d+: model_config\.resize_interpolation_method: NEAREST is not "
                                        r"one of BILINEAR, BICUBIC"):
        parse_spec_text("model_config { resize_interpolation_method: NEAREST }", source="s.txt")
    with pytest.raises(SpecError, match=r"^s\.txt:3:\d+: train_config\.batch_size_per_gpu: Couldn't parse integer"):
        parse_spec_text('train_config {\n  n_epochs: 3\n  batch_size_per_gpu: "many"\n}', source="s.txt")


# -- 3. options a family does not take --------------------------------------------------------------------------

@pytest.mark.parametrize("arch,written,built", [
    ("resnet", "swish", "relu"), ("vgg", "mish", "relu"), ("googlenet", "swish", "relu"),
    ("darknet", "relu", "leaky_relu"),
    # the original's builder passes mobilenets, alexnet and squeezenet no activation_type: their templates' ReLU
    ("mobilenet_v2", "swish", "relu"), ("mobilenet_v1", "relu6", "relu"), ("alexnet", "swish", "relu"),
    ("squeezenet", "mish", "relu"),
])
def test_activation_type_a_family_does_not_take_is_a_warning_not_another_network(arch, written, built):
    n_layers = {"resnet": "n_layers: 10", "vgg": "n_layers: 16", "darknet": "n_layers: 19"}.get(arch, "")
    text = (f'model_config {{\n  arch: "{arch}" {n_layers} input_image_size: "3,32,32"\n'
            f'  activation {{ activation_type: "{written}" }}\n}}\n')
    spec = parse_spec_text(text, source="s.txt")
    assert spec.model.activation.activation_type == built
    assert any(w.startswith("s.txt:3: model_config.activation.activation_type: ignored") for w in spec.warnings)


@pytest.mark.parametrize("arch,written", [
    ("cspdarknet_tiny", "mish"), ("efficientnet_b0", "relu"), ("efficientnet_b5", "mish"), ("cspdarknet", "swish"),
])
def test_activation_type_is_taken_where_the_family_takes_it(arch, written):
    text = f'model_config {{ arch: "{arch}" activation {{ activation_type: "{written}" }} }}'
    spec = parse_spec_text(text)
    assert spec.model.activation.activation_type == written
    assert not [w for w in spec.warnings if "activation" in w]


@pytest.mark.parametrize("arch,retain_head,built", [
    ("vgg", True, 0.7),  # the facts file: dropout applies to vgg's head
    ("vgg", False, 0.0),  # the default head has none
    ("squeezenet", True, 1e-3),  # the original's fixed rate
    ("googlenet", True, 0.4),  # facts file: googlenet head dropout 0.4
    ("efficientnet_b3", True, 0.3),  # facts file: b3 dropout .3
    ("resnet", True, 0.0),
    ("alexnet", True, 0.0),  # the original's alexnet head has no dropout layer
    ("mobilenet_v2", True, 0.0),
])
def test_dropout_applies_only_where_the_originals_head_has_it(arch, retain_head, built):
    text = (f'model_config {{\n  arch: "{arch}"\n  retain_head: {str(retain_head).lower()}\n'
            f'  dropout: 0.7\n}}\n')
    spec = parse_spec_text(text, source="s.txt")
    assert spec.model.dropout == pytest.approx(built)
    warned = [w for w in spec.warnings if w.startswith("s.txt:4: model_config.dropout: 0.7 is ignored")]
    assert bool(warned) == (built != pytest.approx(0.7))


@pytest.mark.parametrize("arch,field,written,built", [
    ("efficientnet_b0", "use_batch_norm", "false", True),  # the original's efficientnet always has batch norm
    ("efficientnet_b7", "use_batch_norm", "False", True),
    ("alexnet", "use_batch_norm", "true", False),  # alexnet and squeezenet: no batch norm, biases
    ("alexnet", "use_bias", "false", True),
    ("squeezenet", "use_batch_norm", "True", False),
    ("squeezenet", "use_bias", "false", True),
])
def test_batch_norm_and_bias_a_family_fixes_are_a_warning_naming_the_line(arch, field, written, built):
    text = f'model_config {{\n  arch: "{arch}"\n  input_image_size: "3,32,32"\n  {field}: {written}\n}}\n'
    spec = parse_spec_text(text, source="s.txt")
    assert getattr(spec.model, field) is built
    assert [w for w in spec.warnings if w.startswith(f"s.txt:4: model_config.{field}: {written.lower()} is ignored")]


@pytest.mark.parametrize("arch,field,written", [
    ("efficientnet_b0", "use_bias", True), ("efficientnet_b0", "use_batch_norm", True),
    ("alexnet", "use_batch_norm", False), ("squeezenet", "use_bias", True),
    ("mobilenet_v1", "use_batch_norm", False), ("mobilenet_v2", "use_bias", True), ("darknet", "use_bias", True),
    ("resnet", "use_batch_norm", False),
])
def test_batch_norm_and_bias_as_the_original_builds_them_are_quiet(arch, field, written):
    text = f'model_config {{ arch: "{arch}" {field}: {str(written).lower()} }}'
    spec = parse_spec_text(text)
    assert getattr(spec.model, field) is written
    assert not [w for w in spec.warnings if field in w]


# -- the audit's kind of file: legal, unusual, written as the original's users write them ---------------------

TAO_SPECS = __import__("pathlib").Path(__file__).parent / "tao_specs"


@pytest.mark.parametrize("name,summary", [
    ("retrain_no_reg.txt", "resnet18 3x224x224, sgd + step lr 0.006, 120 epochs, batch 32/GPU"),
    ("field_written_twice.txt", "resnet50 3x224x224, adam + cosine lr 0.05, 80 epochs, batch 48/GPU"),
    ("efficientnet_relu_soft_anneal.txt", "efficientnet_b1 3x240x240, rmsprop + soft_anneal lr 0.05, 120 epochs"),
])
def test_the_originals_legal_specs_pass_spec_check_for_training(name, summary):
    path = TAO_SPECS / name
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "spec", "check", "-e", str(path),
                           "--task", "train"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert summary in proc.stdout
    spec = load_spec(path, task="train")
    if name == "retrain_no_reg.txt":
        assert spec.train.reg.type == "None"
    if name == "efficientnet_relu_soft_anneal.txt":
        assert (spec.model.activation.activation_type, spec.model.dropout) == ("relu", 0.2)  # facts: b1 dropout .2
        assert spec.train.lr.annealing_points == ()


def test_repeated_fields_maps_lists_and_comments_are_not_taken_for_duplicates():
    text = ('model_config {\n  arch: "resnet"  # a comment with { braces } and "quotes"\n  freeze_blocks: 0\n'
            '  freeze_blocks: 1\n  input_image_size: "3,32,32"\n}\ntrain_config {\n  train_dataset_path: "a#b"\n'
            '  model_parallelism: [0.5, 0.5]\n  image_mean { key: "r" value: 1 }\n  image_mean { key: "g" value: 2 }\n'
            '  image_mean { key: "b" value: 3 }\n}\n')
    oracle = experiment_pb2.Experiment()
    text_format.Merge(text, oracle)
    spec = parse_spec_text(text, source="s.txt")
    assert list(spec.model.freeze_blocks) == list(oracle.model_config.freeze_blocks) == [0, 1]
    assert spec.train.train_dataset_path == "a#b"
    assert dict(spec.train.image_mean) == dict(oracle.train_config.image_mean)
    assert not [w for w in spec.warnings if "written twice" in w or "replaces" in w]
