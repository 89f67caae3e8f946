"""Percent and ETA in the cluster status: the pure arithmetic, the callback's timing (a clock the test sets) and
the callback inside a real Keras fit, each report going through the real ClusterStatusReporter to a loopback
HTTP server. Expected values are worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kestrel_trainer.report.cluster_status import ClusterStatusReporter
from kestrel_trainer.report.progress import (
    MID_EPOCH_REPORT_SECONDS,
    eta_text,
    format_duration,
    percent_done,
    steps_done,
)
from kestrel_trainer.spec import contract
from kestrel_trainer.train.callbacks import ClusterProgress, row_metrics
from tests.operator.loopback_api import LoopbackApi

STATUS_PATH = "/apis/kestrel.dev/v1alpha1/namespaces/ml/classificationtrains/r18/status"


def test_steps_and_percent():
    assert steps_done(2, 3, 5) == 13  # two whole epochs of 5 steps, 3 steps into the third
    assert percent_done(0, 10) == 0
    assert percent_done(1, 3) == 33  # 33.3 rounded down
    assert percent_done(2, 3) == 66  # 66.7: rounded down, never ahead of the run
    assert percent_done(599, 600) == 99  # 100 only when every step is done
    assert percent_done(600, 600) == 100
    assert percent_done(700, 600) == 100 and percent_done(-1, 600) == 0
    assert percent_done(0, 0) == 100  # nothing to do is done


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (-3, "0s"), (45, "45s"), (59.4, "59s"), (59.6, "1m"),  # rounded to whole seconds
    (4 * 60 + 10, "4m10s"), (4 * 60, "4m"), (60 + 59, "1m59s"),
    (3600 + 2 * 60, "1h2m"), (3600 + 2 * 60 + 59, "1h2m"),  # hours: seconds left out, as kubectl
    (5 * 3600, "5h"), (86400, "1d"), (3 * 86400 + 4 * 3600 + 5 * 60, "3d4h"),
])
def test_durations_read_like_kubectl_ages(seconds, text):
    assert format_duration(seconds) == text


def test_eta_is_the_measured_time_per_step_times_the_steps_left():
    assert eta_text(30.0, 12, 100) == "4m10s"  # 30 s / 12 steps = 2.5 s a step, x 100 steps = 250 s
    assert eta_text(10.0, 4, 0) == "0s"  # done
    assert eta_text(None, 0, 10) == "" and eta_text(5.0, 0, 10) == ""  # nothing measured yet


@pytest.fixture
def api(tmp_path, monkeypatch):
    with LoopbackApi() as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield server


def _reporter() -> ClusterStatusReporter:
    return ClusterStatusReporter("kestrel.dev", "v1alpha1", "classificationtrains", "r18", "ml", run="r18-g2")


def _progress(server: LoopbackApi) -> list[dict]:
    patches = [r for r in server.requests if r["method"] == "PATCH"]
    assert all(r["path"] == STATUS_PATH for r in patches)
    return [r["body"]["status"]["progress"] for r in patches]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_reports_after_each_epoch_and_every_interval_inside_one(api):
    """2 epochs of 10 steps, 4 s a step, 5 s of validation, from t=100: the interval is the default 30 s."""
    assert MID_EPOCH_REPORT_SECONDS == 30
    clock = Clock(100.0)
    cb = ClusterProgress(_reporter(), max_epoch=2, steps_per_epoch=10, clock=clock)
    logs = [{"loss": 0.875, "acc": 0.625, "val_loss": 1.0, "val_acc": 0.5},
            {"loss": 0.75, "acc": 0.75, "val_loss": 0.875, "val_acc": 0.625}]
    cb.on_train_begin()
    for epoch in range(2):
        start = clock.now
        cb.on_epoch_begin(epoch)
        for batch in range(10):
            clock.now = start + 4 * (batch + 1)
            cb.on_train_batch_end(batch)
        clock.now = start + 45
        cb.on_epoch_end(epoch, dict(logs[epoch]))
    got = [{k: p[k] for k in ("epoch", "percent", "eta", "loss", "valAccuracy")} for p in _progress(api)]
    assert got == [
        # t=132 (the first step end at least 30 s after the first step began, t=100): 8 of 20 steps done, in
        # 32 s: 4 s a step x 12 left = 48 s; no epoch finished yet
        {"epoch": 0, "percent": 40, "eta": "48s", "loss": None, "valAccuracy": None},
        # t=145, end of epoch 1: 10 steps in 45 s: 4.5 s a step x 10 left = 45 s
        {"epoch": 1, "percent": 50, "eta": "45s", "loss": 0.875, "valAccuracy": 0.5},
        # t=177, the first step end 30 s after that report: 18 steps in 77 s: 77/18 x 2 = 8.6 s; epoch 1's metrics
        {"epoch": 1, "percent": 90, "eta": "9s", "loss": 0.875, "valAccuracy": 0.5},
        {"epoch": 2, "percent": 100, "eta": "0s", "loss": 0.75, "valAccuracy": 0.625},
    ]
    last = _progress(api)[-1]
    evaluation = {contract.PROGRESS_TOP1, contract.PROGRESS_TOPK, contract.PROGRESS_TOP_K_VALUE}
    # train --evaluate adds those, after training; trackerRun comes in its own report at the start
    assert set(last) == set(contract.PROGRESS_FIELDS) - evaluation - {contract.PROGRESS_TRACKER_RUN}
    assert last["run"] == "r18-g2" and last["maxEpoch"] == 2


def test_a_resumed_run_times_only_its_own_steps(api):
    """Resumed 4 steps into epoch 2 of 2 (10 steps each): 14 of 20 steps done before this process started.
    Its own steps take 10 s; the first report, at t=30, counts 3 steps in 30 s, so 3 steps left take 30 s
    (counting the 17 steps of the run would say 5 s)."""
    clock = Clock(0.0)
    row = {"epoch": "1", "acc": "0.5", "loss": "1.25", "lr": "0.01", "val_acc": "0.375", "val_loss": "1.5"}
    cb = ClusterProgress(_reporter(), max_epoch=2, steps_per_epoch=10, epochs_done=1, steps_offset=4,
                         last_metrics=row_metrics(row), clock=clock)
    cb.on_train_begin()
    cb.on_epoch_begin(1)
    for batch in range(3):
        clock.now = 10.0 * (batch + 1)
        cb.on_train_batch_end(batch)
    (progress,) = _progress(api)
    assert {k: progress[k] for k in ("epoch", "percent", "eta", "loss", "accuracy", "valLoss", "valAccuracy")} == {
        "epoch": 1, "percent": 85, "eta": "30s", "loss": 1.25, "accuracy": 0.5, "valLoss": 1.5, "valAccuracy": 0.375}


def test_after_a_refused_report_only_epoch_ends_try_again(api):
    api.responses[("PATCH", STATUS_PATH)] = (500, {"message": "etcd is slow"})
    clock = Clock(0.0)
    cb = ClusterProgress(_reporter(), max_epoch=1, steps_per_epoch=100, clock=clock)
    cb.on_train_begin()
    for batch in range(100):  # 31 s a step: every step end is past the interval
        clock.now = 31.0 * (batch + 1)
        cb.on_train_batch_end(batch)
    cb.on_epoch_end(0, {"loss": 1.0})
    assert [p["epoch"] for p in _progress(api)] == [0, 1]  # the first mid-epoch try, then the epoch's report


def test_the_callback_reports_inside_a_real_fit(api):
    """A real Keras fit, 2 epochs of 3 steps, interval 0: a report after every step and every epoch."""
    x = np.random.default_rng(0).normal(size=(12, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["acc"])
    cb = ClusterProgress(_reporter(), max_epoch=2, steps_per_epoch=3, interval=0.0)
    history = model.fit(x, y, batch_size=4, epochs=2, validation_data=(x, y), callbacks=[cb], verbose=0)
    progress = _progress(api)
    # steps done of 6 after each step, floor(100 * done / 6); each epoch's report repeats its last step's count
    assert [p["percent"] for p in progress] == [16, 33, 50, 50, 66, 83, 100, 100]
    assert [p["epoch"] for p in progress] == [0, 0, 0, 1, 1, 1, 1, 2]
    assert progress[-1]["eta"] == "0s" and all(p["eta"] for p in progress)
    assert progress[3]["loss"] == pytest.approx(history.history["loss"][0], rel=1e-6)
    assert progress[4]["valAccuracy"] == pytest.approx(history.history["val_acc"][0], rel=1e-6)  # mid-epoch 2
    assert progress[-1]["valLoss"] == pytest.approx(history.history["val_loss"][1], rel=1e-6)


def test_the_tracker_run_is_reported_once_and_epoch_reports_leave_it(api):
    """status.progress.trackerRun (docs/tracking.md): one merge patch with only that field (and run, time); the
    epoch reports that follow do not name it, so a JSON merge patch keeps it."""
    reporter = _reporter()
    url = "http://mlflow.example:5000/#/experiments/1/runs/0123abcd"
    assert reporter.report_tracker(url)
    assert reporter.report(1, 2, 0.5, 0.8, 0.6, 0.7, percent=50, eta="1m")
    tracker, epoch = _progress(api)
    assert tracker["trackerRun"] == url and tracker["run"] == "r18-g2"
    assert set(tracker) == {"trackerRun", "run", "updateTime"}
    assert "trackerRun" not in epoch
