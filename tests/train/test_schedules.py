"""Each LR schedule equals its formula (docs/spec.md) at 10 points, in Python and in TensorFlow."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kestrel_trainer.spec.types import CosineLRSpec, SoftAnnealLRSpec, StepLRSpec
from kestrel_trainer.train.schedules import SpecSchedule, lr_at

TOTAL = 1000
POINTS = [0, 1, 37, 99, 100, 250, 499, 600, 873, 999]


def step_formula(step: int, base: float) -> float:
    """The original's step schedule: gamma ** (step / interval), true division (continuous decay)."""
    interval = math.floor(TOTAL * 20 / 100)  # step_size 20 percent
    return base * 0.5 ** (step / interval)


def soft_anneal_formula(step: int, base: float) -> float:
    p = step / TOTAL
    if p < 0.1:
        return 3e-4 + (base - 3e-4) * p / 0.1
    k = sum(1 for a in (0.3, 0.6, 0.8) if p >= a)
    return base / 10.0**k


def cosine_formula(step: int, base: float) -> float:
    p, lo = step / TOTAL, base * 0.02
    if p < 0.1:
        return lo + (base - lo) * p / 0.1
    return lo + (base - lo) * (1 + math.cos(math.pi * (p - 0.1) / 0.9)) / 2


CASES = [
    (StepLRSpec(learning_rate=0.1, step_size=20, gamma=0.5), step_formula),
    (SoftAnnealLRSpec(learning_rate=0.1, soft_start=0.1, annealing_divider=10.0, annealing_points=(0.3, 0.6, 0.8)),
     soft_anneal_formula),
    (CosineLRSpec(learning_rate=0.1, min_lr_ratio=0.02, soft_start=0.1), cosine_formula),
]


@pytest.mark.parametrize("spec,formula", CASES, ids=["step", "soft_anneal", "cosine"])
@pytest.mark.parametrize("ranks", [1, 4])
def test_schedule_matches_formula(spec, formula, ranks):
    schedule = SpecSchedule.from_spec(spec, total_steps=TOTAL, n_ranks=ranks)
    for step in POINTS:
        expected = formula(step, 0.1 * ranks)
        assert lr_at(spec, step, TOTAL, ranks) == pytest.approx(expected, rel=1e-9)
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), f"step {step}"


def test_cosine_ends_at_min_lr():
    """The original never reaches min_lr (it forgets to normalise by 1 - soft_start); we do."""
    spec = CosineLRSpec(learning_rate=0.1, min_lr_ratio=0.01, soft_start=0.3)
    schedule = SpecSchedule.from_spec(spec, total_steps=TOTAL)
    assert float(schedule(TOTAL)) == pytest.approx(0.1 * 0.01, rel=1e-5)


def test_decay_is_applied_on_top():
    spec = StepLRSpec(learning_rate=0.1, step_size=50, gamma=0.1)
    schedule = SpecSchedule.from_spec(spec, total_steps=TOTAL, decay=0.01)
    values = np.array([float(schedule(s)) for s in (0, 10, 600)])
    # step interval 500 (50 % of 1000); decay 0.01 divides by 1 + 0.01 * step
    expected = np.array([0.1, 0.1 * 0.1 ** (10 / 500) / 1.1, 0.1 * 0.1 ** (600 / 500) / 7.0])
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_schedule_survives_serialization():
    spec = SoftAnnealLRSpec(learning_rate=0.2, soft_start=0.05, annealing_divider=5.0, annealing_points=(0.5,))
    schedule = SpecSchedule.from_spec(spec, total_steps=TOTAL, n_ranks=2)
    clone = SpecSchedule.from_config(schedule.get_config())
    for step in POINTS:
        assert float(clone(step)) == pytest.approx(float(schedule(step)))


def test_step_decays_continuously_as_the_original():
    """Just before the first drop the rate is already ~gamma times base, not base (no staircase)."""
    spec = StepLRSpec(learning_rate=0.1, step_size=10, gamma=0.1)
    schedule = SpecSchedule.from_spec(spec, total_steps=TOTAL)
    assert float(schedule(99)) == pytest.approx(0.1 * 0.1 ** (99 / 100), rel=1e-5)
    assert lr_at(spec, 50, TOTAL) == pytest.approx(0.1 * 0.1**0.5)


def test_the_originals_zeros_from_a_spec_train_the_originals_schedule():
    """Issue 30: soft_anneal without soft_start/points keeps the base rate; cosine without min_lr_ratio ends at 0
    (the original's protobuf zeros), in the TensorFlow schedule the trainer runs too."""
    from kestrel_trainer.spec import parse_spec_text

    text = ('train_config {{ train_dataset_path: "t" val_dataset_path: "v" optimizer {{ sgd {{ }} }} '
            'lr_config {{ {lr} }} }}')
    soft = parse_spec_text(text.format(lr="soft_anneal { learning_rate: 0.05 }"), task="train").train.lr
    schedule = SpecSchedule.from_spec(soft, total_steps=TOTAL)
    assert [float(schedule(step)) for step in POINTS] == pytest.approx([0.05] * len(POINTS), rel=1e-6)
    cosine = parse_spec_text(text.format(lr="cosine { learning_rate: 0.05 }"), task="train").train.lr
    schedule = SpecSchedule.from_spec(cosine, total_steps=TOTAL)
    assert float(schedule(TOTAL)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(TOTAL // 2)) == pytest.approx(0.05 / 2, rel=1e-6)  # (1 + cos(pi/2)) / 2 = 1/2
