"""Every optimizer of the spec trains: a short real run each, checked in the checkpoint it writes.

The optimizer a checkpoint carries is rebuilt from what the run saved, so its class, hyperparameters and
slot variables are the ones training used. Non-default hyperparameters make a value that is silently
dropped (Keras' default used instead) visible. The rmsprop run also trains on an imbalanced copy of the
data with `class_weighting: "balanced"`, whose weights are checked against scikit-learn's.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from kestrel_trainer.model_io.files import load_model
from kestrel_trainer.train import schedules  # noqa: F401  (checkpoints' optimizers use its schedule)
from tests.train.conftest import write_spec

pytestmark = pytest.mark.slow

KEY = "opt-key-5"
legacy = tf.keras.optimizers.legacy

OPTIMIZERS = [
    # spec block, Keras class, hyperparameters as the spec gives them, slot variables the optimizer keeps
    ("sgd { momentum: 0.8 nesterov: true }", legacy.SGD, {"momentum": 0.8, "nesterov": True}, ["momentum"]),
    ("adam { beta_1: 0.85 beta_2: 0.99 epsilon: 1e-6 }", legacy.Adam,
     {"beta_1": 0.85, "beta_2": 0.99, "epsilon": 1e-6}, ["m", "v"]),
    ("rmsprop { rho: 0.8 epsilon: 1e-6 }", legacy.RMSprop, {"rho": 0.8, "epsilon": 1e-6}, ["rms"]),
]
# images kept per class (sorted class names) in the imbalanced copy of the training set
IMBALANCED = [8, 8, 6, 6, 4, 4, 2, 2, 1, 1]


def _imbalanced_copy(data, out):
    shutil.copytree(data / "val", out / "val")
    for keep, folder in zip(IMBALANCED, sorted((data / "train").iterdir())):
        (out / "train" / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:keep]:
            shutil.copy(image, out / "train" / folder.name / image.name)
    return out


@pytest.mark.parametrize("block,cls,hyper,slots", OPTIMIZERS, ids=[o[1].__name__ for o in OPTIMIZERS])
def test_each_optimizer_trains_with_the_specs_hyperparameters(tmp_path, fashion_subset, block, cls, hyper, slots):
    balanced = cls is legacy.RMSprop
    data = _imbalanced_copy(fashion_subset, tmp_path / "data") if balanced else fashion_subset
    spec = write_spec(tmp_path, data, epochs=2)
    text = spec.read_text().replace("sgd { momentum: 0.9 }", block)
    if balanced:
        text = text.replace("  random_seed: 7\n", '  random_seed: 7\n  class_weighting: "balanced"\n')
    spec.write_text(text)
    results = tmp_path / "r"
    proc = subprocess.run(
        [sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r", str(results)],
        capture_output=True, text=True, env=dict(os.environ, KESTREL_KEY=KEY), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    model = load_model(results / "weights" / "resnet_002.tlt", KEY, compile=True)
    optimizer = model.optimizer
    assert type(optimizer) is cls
    config = optimizer.get_config()
    for name, value in hyper.items():
        assert config[name] == pytest.approx(value, rel=1e-6), name
    assert optimizer.get_slot_names() == slots
    assert int(optimizer.iterations.numpy()) == 2 * math.ceil(len(list((data / "train").rglob("*.png"))) / 16)
    for slot in slots:  # the optimizer's own state moved away from its zero start on the trained variables
        assert any(np.any(optimizer.get_slot(v, slot).numpy() != 0) for v in model.trainable_variables), slot
    rows = list(csv.DictReader((results / "training.csv").open()))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses) and losses[0] != losses[1]

    if balanced:
        logged = re.search(r"class weighting 'balanced': (.*)", proc.stderr).group(1)
        weights = {name: float(value) for name, value in (item.split("=") for item in logged.split(", "))}
        names = sorted(p.name for p in (data / "train").iterdir())
        labels = np.repeat(np.arange(len(names)), IMBALANCED)
        expected = compute_class_weight("balanced", classes=np.arange(len(names)), y=labels)
        assert list(weights) == names
        np.testing.assert_allclose([weights[n] for n in names], expected, atol=5e-4)  # printed with 3 decimals
        assert max(weights.values()) / min(weights.values()) == pytest.approx(8.0, rel=1e-2)
