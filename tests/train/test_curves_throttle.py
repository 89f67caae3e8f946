"""training_curves.png is drawn at most every CURVES_EVERY_SECONDS during training and at the end (issue 33 item 4)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from kestrel_trainer.report.status import StatusLogger
from kestrel_trainer.train.callbacks import CURVES_EVERY_SECONDS, EpochOutputs, Throttle

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_throttle_is_due_once_per_period_counted_from_the_start_and_from_each_due():
    clock = FakeClock()
    throttle = Throttle(300.0, clock)
    decisions = []
    for now in (1000.0, 1299.9, 1300.0, 1300.0, 1450.0, 1599.9, 1600.0, 2500.0, 2501.0):
        clock.now = now
        decisions.append(throttle.due())
    assert decisions == [False, False, True, False, False, False, True, True, False]


def test_the_period_is_minutes_not_epochs():
    assert 60.0 <= CURVES_EVERY_SECONDS <= 900.0


class CurvesSeen(tf.keras.callbacks.Callback):
    """After each epoch (placed after EpochOutputs): does training_curves.png exist, and its bytes."""

    def __init__(self, path) -> None:
        super().__init__()
        self.path = path
        self.seen: list[bytes] = []

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.seen.append(self.path.read_bytes() if self.path.exists() else b"")


def test_a_three_epoch_fit_draws_the_curves_when_due_and_at_the_end(tmp_path):
    """A real Keras fit of 3 epochs with real matplotlib; the throttle's clock moves 200 s per epoch, so only
    epoch 2 is due (400 s >= 300 s); epoch 3 is not (200 s after it), and the end of training draws it."""
    x = np.random.default_rng(0).normal(size=(12, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["acc"])
    saved = []
    outputs = EpochOutputs(str(tmp_path), 3, lambda n: saved.append(n) or str(tmp_path / f"m{n}"),
                           StatusLogger(str(tmp_path / "status.json")))
    clock = FakeClock()
    outputs.curves_throttle = Throttle(300.0, clock)

    class Tick(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None) -> None:
            clock.now += 200.0

    png = tmp_path / "training_curves.png"
    seen = CurvesSeen(png)
    model.fit(x, y, batch_size=4, epochs=3, validation_data=(x, y), callbacks=[Tick(), outputs, seen], verbose=0)
    assert saved == [1, 2, 3]
    assert [bool(b) for b in seen.seen] == [False, True, True]
    assert seen.seen[1] == seen.seen[2]  # not drawn again at epoch 3 (only 200 s later)
    final = png.read_bytes()
    assert final.startswith(PNG_SIGNATURE) and final != seen.seen[2]  # drawn at the end, with epoch 3
    # nothing new since: a graceful stop's draw_curves() does not draw again
    before = png.stat().st_mtime_ns
    outputs.draw_curves()
    assert png.stat().st_mtime_ns == before


def test_draw_curves_on_a_graceful_stop_draws_the_epochs_done(tmp_path):
    """A stop before the end (no on_train_end): draw_curves() writes the curves of the epochs that finished."""
    outputs = EpochOutputs(str(tmp_path), 5, lambda n: str(tmp_path / f"m{n}"), StatusLogger(str(tmp_path / "s.json")))
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    outputs.set_model(model)
    outputs.on_epoch_begin(0)
    outputs.on_epoch_end(0, {"loss": 0.5, "acc": 0.6, "val_loss": 0.7, "val_acc": 0.55})
    png = tmp_path / "training_curves.png"
    assert not png.exists()  # the first 5 minutes have not passed
    outputs.draw_curves()
    assert png.read_bytes().startswith(PNG_SIGNATURE)
