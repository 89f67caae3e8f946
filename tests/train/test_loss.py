"""label_smoothing changes the loss exactly as smoothing the targets would (the original's does not)."""

from __future__ import annotations

import numpy as np
import pytest

from kestrel_trainer.spec import parse_spec_text
from kestrel_trainer.train.task import make_loss


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_closed_form(smoothing):
    spec = parse_spec_text(f"train_config {{ label_smoothing: {smoothing} }}")
    y = np.array([[0, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    p = np.array([[0.1, 0.7, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]], np.float32)
    target = y * (1 - smoothing) + smoothing / 4
    expected = float(np.mean(-(target * np.log(p)).sum(axis=1)))
    assert float(make_loss(spec)(y, p)) == pytest.approx(expected, rel=1e-5)


def test_smoothing_raises_loss_of_a_confident_correct_prediction():
    y = np.array([[0, 1]], np.float32)
    p = np.array([[0.01, 0.99]], np.float32)
    plain = float(make_loss(parse_spec_text(""))(y, p))
    smooth = float(make_loss(parse_spec_text("train_config { label_smoothing: 0.2 }"))(y, p))
    assert smooth > plain * 5
