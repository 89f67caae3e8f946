"""Spec files: text format -> defaults -> validation -> an immutable ExperimentSpec.

Imports protobuf only (never TensorFlow), so the operator can validate a resource's spec text. This package is
all the operator imports from the trainer (the import contract in pyproject.toml), so it also names the error
a bad spec raises.
"""

from kestrel_trainer.errors import SpecError
from kestrel_trainer.spec.loader import TASKS, load_spec, parse_spec_text
from kestrel_trainer.spec.types import EvalSpec, ExperimentSpec, ModelSpec, TrainSpec

__all__ = ["TASKS", "load_spec", "parse_spec_text", "ExperimentSpec", "ModelSpec", "TrainSpec", "EvalSpec",
           "SpecError"]
