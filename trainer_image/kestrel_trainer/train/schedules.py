"""Learning-rate schedules of the spec (step, soft_anneal, cosine), evaluated every step.

`lr_at` is the plain-Python reference of the formulas in docs/spec.md; `SpecSchedule` is the same
math as a Keras LearningRateSchedule, driven by the optimizer's `iterations`. Because the step
counter lives in the optimizer state, a resumed run continues the schedule exactly where it stopped.
Base rate = learning_rate x number of data-parallel ranks, as in the original.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from kestrel_trainer.spec.types import CosineLRSpec, LRSpec, SoftAnnealLRSpec, StepLRSpec

SOFT_ANNEAL_START_LR = 3e-4  # the original's warm-up starting rate


def step_interval(lr: StepLRSpec, total_steps: int) -> int:
    """Steps between decays: step_size percent of the run, at least one step."""
    return max(1, int(math.floor(total_steps * lr.step_size / 100.0)))


def lr_at(lr: LRSpec, step: int, total_steps: int, n_ranks: int = 1, decay: float = 0.0) -> float:
    """Reference learning rate at `step` (0-based) of a run of `total_steps` steps."""
    return _lr_at(lr, step, total_steps, n_ranks) / (1.0 + decay * step)


def _lr_at(lr: LRSpec, step: int, total_steps: int, n_ranks: int) -> float:
    base = lr.learning_rate * n_ranks
    p = min(step / max(total_steps, 1), 1.0)
    if isinstance(lr, StepLRSpec):
        # True division, as the original: the rate decays continuously, not in stairs.
        return base * lr.gamma ** (step / step_interval(lr, total_steps))
    if isinstance(lr, SoftAnnealLRSpec):
        if p < lr.soft_start:
            return SOFT_ANNEAL_START_LR + (base - SOFT_ANNEAL_START_LR) * p / lr.soft_start
        k = sum(1 for point in lr.annealing_points if point <= p)
        return base / lr.annealing_divider**k
    if isinstance(lr, CosineLRSpec):
        lo = base * lr.min_lr_ratio
        if p < lr.soft_start:
            return lo + (base - lo) * p / lr.soft_start
        q = (p - lr.soft_start) / (1.0 - lr.soft_start)
        return lo + (base - lo) * (1.0 + math.cos(math.pi * q)) / 2.0
    raise TypeError(f"unknown schedule {lr!r}")


@tf.keras.utils.register_keras_serializable(package="kestrel")
class SpecSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """The spec's schedule in TensorFlow ops (serializable, so checkpoints keep it)."""

    def __init__(
        self,
        name: str,
        learning_rate: float,
        total_steps: int,
        n_ranks: int = 1,
        step_size: int = 10,
        gamma: float = 0.1,
        soft_start: float = 0.0,
        annealing_divider: float = 10.0,
        annealing_points: tuple[float, ...] = (),
        min_lr_ratio: float = 0.0,
        decay: float = 0.0,
    ) -> None:
        super().__init__()
        self.kind = name
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.n_ranks = int(n_ranks)
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        self.soft_start = float(soft_start)
        self.annealing_divider = float(annealing_divider)
        self.annealing_points = tuple(float(x) for x in annealing_points)
        self.min_lr_ratio = float(min_lr_ratio)
        self.decay = float(decay)

    @classmethod
    def from_spec(cls, lr: LRSpec, total_steps: int, n_ranks: int = 1, decay: float = 0.0) -> SpecSchedule:
        fields: dict[str, Any] = {k: v for k, v in vars(lr).items() if k != "name"}
        return cls(name=lr.name, total_steps=total_steps, n_ranks=n_ranks, decay=decay, **fields)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        rate = self._schedule(step)
        if self.decay > 0:
            # Keras' legacy `decay` (the optimizer field of the spec), applied on top of the schedule.
            rate = rate / (1.0 + self.decay * tf.cast(step, tf.float32))
        return rate

    def _schedule(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        base = tf.constant(self.learning_rate * self.n_ranks, tf.float32)
        total = float(max(self.total_steps, 1))
        p = tf.minimum(step / total, 1.0)
        if self.kind == "step":
            interval = float(max(1, math.floor(self.total_steps * self.step_size / 100.0)))
            return base * tf.pow(self.gamma, step / interval)  # continuous, as the original
        if self.kind == "soft_anneal":
            warm = SOFT_ANNEAL_START_LR + (base - SOFT_ANNEAL_START_LR) * p / max(self.soft_start, 1e-12)
            k = tf.zeros([], tf.float32)
            for point in self.annealing_points:
                k += tf.cast(p >= point, tf.float32)
            annealed = base / tf.pow(self.annealing_divider, k)
            return tf.where(p < self.soft_start, warm, annealed)
        if self.kind == "cosine":
            lo = base * self.min_lr_ratio
            warm = lo + (base - lo) * p / max(self.soft_start, 1e-12)
            q = (p - self.soft_start) / (1.0 - self.soft_start)
            cosine = lo + (base - lo) * (1.0 + tf.cos(math.pi * q)) / 2.0
            return tf.where(p < self.soft_start, warm, cosine)
        raise ValueError(f"unknown schedule {self.kind}")

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.kind,
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "n_ranks": self.n_ranks,
            "step_size": self.step_size,
            "gamma": self.gamma,
            "soft_start": self.soft_start,
            "annealing_divider": self.annealing_divider,
            "annealing_points": list(self.annealing_points),
            "min_lr_ratio": self.min_lr_ratio,
            "decay": self.decay,
        }


# Keras 2's h5 format stores an optimizer's schedule by bare class name; register that name too, so any
# load_model(..., compile=True) of our checkpoints works once this module is imported.
tf.keras.utils.get_custom_objects()["SpecSchedule"] = SpecSchedule
