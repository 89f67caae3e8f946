"""The training task: what varies per experiment (model, optimizer, loss, metrics), built from the spec.

The loop (loop.py) owns what does not vary: epochs, checkpoints, resume, ranks, outputs.
"""

from __future__ import annotations

import logging
from typing import Optional

import tensorflow as tf

from kestrel_trainer.spec.types import AdamSpec, ExperimentSpec, RmspropSpec, SgdSpec
from kestrel_trainer.train.schedules import SpecSchedule

log = logging.getLogger(__name__)


def make_schedule(spec: ExperimentSpec, total_steps: int, n_ranks: int = 1) -> SpecSchedule:
    """The spec's LR schedule over `total_steps` steps with the optimizer's `decay` folded in."""
    opt, lr = spec.train.optimizer, spec.train.lr
    assert opt is not None and lr is not None, "the train task is validated to have both"
    return SpecSchedule.from_spec(lr, total_steps=total_steps, n_ranks=n_ranks, decay=opt.decay)


def make_optimizer(spec: ExperimentSpec, total_steps: int, n_ranks: int = 1) -> tf.keras.optimizers.Optimizer:
    """The spec's optimizer with the spec's LR schedule; `decay` is folded into the schedule.

    Keras 2's legacy optimizers: Horovod's DistributedOptimizer and the h5 checkpoint format both
    handle them (optimizer state included), which the Keras 2.11+ optimizers do less well.
    """
    opt = spec.train.optimizer
    assert opt is not None, "the train task is validated to have an optimizer"
    schedule = make_schedule(spec, total_steps, n_ranks)
    legacy = tf.keras.optimizers.legacy
    if isinstance(opt, SgdSpec):
        return legacy.SGD(learning_rate=schedule, momentum=opt.momentum, nesterov=opt.nesterov)
    if isinstance(opt, AdamSpec):
        return legacy.Adam(learning_rate=schedule, beta_1=opt.beta_1, beta_2=opt.beta_2, epsilon=opt.epsilon)
    if isinstance(opt, RmspropSpec):
        return legacy.RMSprop(learning_rate=schedule, rho=opt.rho, epsilon=opt.epsilon)
    raise TypeError(f"unknown optimizer {opt!r}")


def make_loss(spec: ExperimentSpec) -> tf.keras.losses.Loss:
    """Cross-entropy on softmax outputs; label_smoothing really smooths the targets here."""
    return tf.keras.losses.CategoricalCrossentropy(label_smoothing=spec.train.label_smoothing)


def make_metrics() -> list[tf.keras.metrics.Metric]:
    return [tf.keras.metrics.CategoricalAccuracy(name="acc")]


def compile_model(
    model: tf.keras.Model,
    spec: ExperimentSpec,
    optimizer: tf.keras.optimizers.Optimizer,
    wrap_optimizer: Optional[callable] = None,
) -> None:
    """Compile with the spec's loss and metrics; `wrap_optimizer` lets Horovod wrap the optimizer."""
    if wrap_optimizer is not None:
        optimizer = wrap_optimizer(optimizer)
    model.compile(optimizer=optimizer, loss=make_loss(spec), metrics=make_metrics())
