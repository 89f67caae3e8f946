"""Keras callbacks of the training loop: per-epoch outputs, cluster status, preemption, plain progress lines.

Everything that writes runs on the chief rank only (the loop does not attach them elsewhere).
Order inside an epoch end: checkpoint first (atomic), then the records that point at it, so a crash
between the two leaves a checkpoint without a CSV row (the resumed run re-writes it), never a row
for a checkpoint that does not exist.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import signal
import time
from typing import Any, Callable, Optional

import tensorflow as tf

from kestrel_trainer.model_io.files import write_atomic, write_json_atomic  # noqa: F401 - loop.py imports it here
from kestrel_trainer.report.progress import MID_EPOCH_REPORT_SECONDS, eta_text, percent_done, steps_done
from kestrel_trainer.report.status import StatusLogger
from kestrel_trainer.spec.contract import STOP_SIGNALS
from kestrel_trainer.train import rank_registry
from kestrel_trainer.train.distributed import Ranks, StopDecision, StopVote, broadcast_object

log = logging.getLogger("kestrel.train")

_STOP_SIGNALS = tuple(getattr(signal, name) for name in STOP_SIGNALS)
CSV_FIELDS = ("epoch", "acc", "loss", "lr", "val_acc", "val_loss")  # the original's order (Keras' CSVLogger: sorted)
# training_curves.png costs ~1 s of CPU per drawing (matplotlib, 2 cores): drawn at most this often during training,
# and once more at the end of training and on a graceful stop (EpochOutputs.draw_curves).
CURVES_EVERY_SECONDS = 300.0


def current_lr(model: tf.keras.Model) -> float:
    """The rate the optimizer applies at its current step (schedule and decay included)."""
    opt = model.optimizer
    inner = getattr(opt, "inner_optimizer", opt)  # LossScaleOptimizer under AMP
    lr = inner.learning_rate if hasattr(inner, "learning_rate") else inner.lr
    if callable(lr):
        return float(lr(inner.iterations))
    return float(tf.keras.backend.get_value(lr))


def read_csv_rows(path: str) -> list[dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_csv_rows(path: str, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue().encode("utf-8"))


class Throttle:
    """Whether a periodic job is due: at most once per `every_seconds` of `clock`, counted from creation."""

    def __init__(self, every_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_seconds = every_seconds
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        """True (and the period restarts) when `every_seconds` have passed since the last time it was due."""
        now = self.clock()
        if now - self.last < self.every_seconds:
            return False
        self.last = now
        return True


class EpochOutputs(tf.keras.callbacks.Callback):
    """Checkpoint, training.csv, status.json, LR in the logs (for TensorBoard), curves.

    training_curves.png is drawn when CURVES_EVERY_SECONDS have passed since the last drawing (or the start),
    at the end of each fit() and, through draw_curves(), when a graceful stop ends the run.
    """

    def __init__(
        self,
        results_dir: str,
        max_epoch: int,
        save_checkpoint: Callable[[int], str],
        status: StatusLogger,
        rows: Optional[list[dict[str, Any]]] = None,
    ) -> None:
        super().__init__()
        self.results_dir = results_dir
        self.max_epoch = max_epoch
        self.save_checkpoint = save_checkpoint
        self.status = status
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.csv_path = os.path.join(results_dir, "training.csv")
        self._epoch_start = time.monotonic()
        self.last_checkpoint: Optional[str] = None
        self.curves_throttle = Throttle(CURVES_EVERY_SECONDS)
        self._epochs_ended = 0  # in this process
        self._curves_drawn = -1  # _epochs_ended at the last drawing

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._epoch_start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        logs = logs if logs is not None else {}
        number = epoch + 1
        lr = current_lr(self.model)
        logs["lr"] = lr  # TensorBoard, placed after this callback, logs it as epoch_lr
        seconds = time.monotonic() - self._epoch_start
        self.last_checkpoint = self.save_checkpoint(number)
        row = {"epoch": number, **{k: logs.get(k) for k in CSV_FIELDS[1:]}}
        row["lr"] = lr
        self.rows = [r for r in self.rows if int(r["epoch"]) < number] + [row]
        self._epochs_ended += 1
        write_csv_rows(self.csv_path, self.rows)
        self.status.epoch(number, self.max_epoch, seconds, logs, lr)
        if self.curves_throttle.due():
            self.draw_curves()
        val = f", val_loss {logs['val_loss']:.4f}, val_acc {logs['val_acc']:.4f}" if "val_acc" in logs else ""
        log.info(
            "epoch %d/%d: loss %.4f, acc %.4f%s, lr %.6g, %.1f s -> %s",
            number, self.max_epoch, logs.get("loss", float("nan")), logs.get("acc", float("nan")), val, lr,
            seconds, os.path.basename(self.last_checkpoint),
        )


    def on_train_end(self, logs: Optional[dict] = None) -> None:
        self.draw_curves()

    def draw_curves(self) -> None:
        """training_curves.png from the rows so far, unless it already shows them all."""
        if not self.rows or self._curves_drawn == self._epochs_ended:
            return
        try:
            from kestrel_trainer.report.plots import training_curves

            training_curves(self.rows, os.path.join(self.results_dir, "training_curves.png"))
            self._curves_drawn = self._epochs_ended
        except Exception as err:  # a plot must never stop training
            log.warning("could not draw training_curves.png: %s", err)


REPORTED_METRICS = ("loss", "acc", "val_loss", "val_acc")  # Keras' names (training.csv's columns)


def row_metrics(row: Optional[dict[str, Any]]) -> dict[str, Optional[float]]:
    """An epoch's metrics from its Keras logs or training.csv row (strings there; "" or absent: None)."""
    row = row or {}
    return {name: None if row.get(name) in (None, "") else float(row[name]) for name in REPORTED_METRICS}


class ClusterProgress(tf.keras.callbacks.Callback):
    """status.progress of the run's resource (contract.PROGRESS_FIELDS), rank 0 only: after every epoch with
    its metrics, and inside an epoch at most every `interval` seconds with the last finished epoch's metrics,
    so `kubectl get` shows the run moving in long epochs. Percent and ETA count the steps of the whole run;
    the time per step is this process's own (report/progress.py). Placed after EpochOutputs (an epoch is
    reported once its checkpoint exists) and Preemption (a SIGTERM checkpoints before any report). The
    reporter never raises; after a failed report, mid-epoch reports wait for an epoch's report to get
    through, so an unreachable API server costs one timeout per epoch."""

    def __init__(self, reporter: Any, max_epoch: int, steps_per_epoch: int, epochs_done: int = 0,
                 steps_offset: int = 0, last_metrics: Optional[dict[str, Optional[float]]] = None,
                 interval: float = MID_EPOCH_REPORT_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.reporter = reporter
        self.max_epoch = max_epoch
        self.steps_per_epoch = steps_per_epoch
        self.epochs_done = epochs_done  # finished epochs of the run
        self.steps_offset = steps_offset  # batches of the current epoch done before this fit started
        self.steps_into_epoch = steps_offset
        self.metrics = dict(last_metrics or row_metrics(None))  # the last finished epoch's
        self.interval = interval
        self.clock = clock
        self._started: Optional[float] = None  # this process's first step
        self._steps_run = 0  # steps this process ran
        self._last_report: Optional[float] = None
        self._reporting = True  # the last report got through (or none was sent yet)

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        if self._started is None:  # the first of the fits (a partial epoch has its own)
            self._started = self.clock()

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        self._steps_run += 1
        self.steps_into_epoch = self.steps_offset + batch + 1
        now = self.clock()
        since = self._last_report if self._last_report is not None else self._started
        if self._reporting and since is not None and now - since >= self.interval:
            self._report(now)

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        self.epochs_done, self.steps_into_epoch, self.steps_offset = epoch + 1, 0, 0
        self.metrics = row_metrics(logs)
        self._report(self.clock())

    def progress(self, now: float) -> tuple[int, str]:
        """(percent of the run's steps done, time left) at clock time `now`."""
        total = self.max_epoch * self.steps_per_epoch
        done = steps_done(self.epochs_done, self.steps_into_epoch, self.steps_per_epoch)
        elapsed = None if self._started is None else now - self._started
        return percent_done(done, total), eta_text(elapsed, self._steps_run, total - done)

    def _report(self, now: float) -> None:
        percent, eta = self.progress(now)
        m = self.metrics
        self._reporting = bool(self.reporter.report(
            epoch=self.epochs_done, max_epoch=self.max_epoch, loss=m["loss"], accuracy=m["acc"],
            val_loss=m["val_loss"], val_accuracy=m["val_acc"], percent=percent, eta=eta))
        self._last_report = self.clock()  # the next interval starts after this report's own time


class SampleImages(tf.keras.callbacks.Callback):
    """visualizer { enabled: true num_images: N }: N augmented training images, as the model sees them, in
    TensorBoard (RESULTS/events/images) at the start of every epoch. Each image is rescaled to [0, 1] on
    its own for display (the preprocessing leaves them in another range)."""

    def __init__(self, log_dir: str, images: Callable[[], Any], max_images: int) -> None:
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.images = images
        self.max_images = max_images

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        x = tf.convert_to_tensor(self.images())[: self.max_images]
        lo = tf.reduce_min(x, axis=[1, 2, 3], keepdims=True)
        hi = tf.reduce_max(x, axis=[1, 2, 3], keepdims=True)
        with self.writer.as_default():
            tf.summary.image("augmented_training_images", (x - lo) / tf.maximum(hi - lo, 1e-6), step=epoch + 1,
                             max_outputs=self.max_images)
        self.writer.flush()


class PreemptedSignal(Exception):
    """Raised out of fit() after the preemption checkpoint is written; the loop turns it into an exit."""


class Preemption(tf.keras.callbacks.Callback):
    """A stop request (contract.STOP_SIGNALS: SIGTERM from Kubernetes, `kill` or the pod's entrypoint, SIGUSR1 that
    mpirun forwards from the launcher's): finish the current step, checkpoint, stop; every rank after the same step.

    The signal handler only sets a flag; the checkpoint is written between steps, where the model and optimizer
    are consistent. One rank checks its flag after every step. Several ranks agree at the next vote (StopVote,
    about once a second of training) and leave fit() after that same step: rank 0 writes the checkpoint and
    records the stop (`on_saved`: status.json), and no rank leaves before it has (mpirun stops the other ranks
    as soon as one exits). While installed, a rank of several is registered for its pod's entrypoint (rank_registry).
    """

    def __init__(self, save_partial: Optional[Callable[[int, int], str]], steps_offset: int = 0,
                 ranks: Optional[Ranks] = None, on_saved: Optional[Callable[[str, str], None]] = None,
                 vote: Optional[StopVote] = None) -> None:
        super().__init__()
        self._supports_tf_logs = True  # it reads no logs: Keras need not copy them to Python after every step
        self.save_partial = save_partial  # rank 0 saves; None on the other ranks
        self.on_saved = on_saved  # rank 0: (reason, checkpoint) recorded before any rank leaves
        self.ranks = ranks = ranks or Ranks()
        self.vote = vote if vote is not None or not ranks.distributed else StopVote(ranks)
        self.requested: Optional[int] = None  # the signal this process got
        self.decision: Optional[StopDecision] = None  # the stop the ranks agreed on
        self.saved_path: Optional[str] = None  # set on every rank once the job has stopped and rank 0 saved
        self.steps_offset = steps_offset  # batches of the first epoch done before this fit started
        self._epoch = 0
        self._previous: dict[int, Any] = {}
        self._registration: Optional[str] = None

    @property
    def reason(self) -> str:
        """What stopped the run, as messages say it: "signal 15" (on rank 1, with several ranks)."""
        d = self.decision or StopDecision(self.requested or 0, self.ranks.rank)
        return f"signal {d.signum}" + (f" on rank {d.rank}" if self.ranks.distributed else "")

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in _STOP_SIGNALS}
        if self.ranks.distributed:  # a rank in a worker pod: its pod's entrypoint must find it
            self._registration = rank_registry.register(self.ranks.rank)

    def uninstall(self) -> None:
        rank_registry.unregister(self._registration)
        self._registration = None
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is None:
            self.requested = signum
        if self.ranks.distributed:
            log.warning("rank %d received signal %d: every rank finishes its current step and stops at the next vote "
                        "(within about %.0f s of training), then rank 0 checkpoints", self.ranks.rank, signum,
                        self.vote.every_seconds if self.vote else 0)
        else:
            log.warning("received signal %d: finishing the current step, then checkpointing", signum)

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        if self.saved_path is not None:
            return
        if self.vote is None:
            if self.requested is None:
                return
            decision = StopDecision(self.requested, self.ranks.rank)
        else:
            if not self.vote.due():
                return
            decision = self.vote.vote(self.requested or 0)
            if not decision.signum:
                return
        self.decision = decision
        self._stop(batch)

    def _stop(self, batch: int) -> None:
        if self.ranks.distributed:  # the same step on every rank (tests and e2e compare these lines)
            log.warning("rank %d stops after step %d of epoch %d (%s)", self.ranks.rank,
                        batch + 1 + self.steps_offset, self._epoch + 1, self.reason)
        if batch + 1 == (self.params or {}).get("steps"):
            # The epoch's last step: all its steps are done, only its validation is not. Named as step 0 of the
            # next epoch, so a rerun starts that epoch (a partial epoch with no step left cannot be resumed).
            if self.ranks.is_chief:
                log.warning("the stop came in the last step of epoch %d: checkpointing as the start of epoch %d "
                            "(epoch %d's validation and training.csv row are skipped)", self._epoch + 1,
                            self._epoch + 2, self._epoch + 1)
            number, steps = self._epoch + 2, 0
        else:
            number, steps = self._epoch + 1, batch + 1 + self.steps_offset
        path = None
        if self.save_partial is not None:
            path = self.save_partial(number, steps)
            if self.on_saved is not None:
                self.on_saved(self.reason, path)
        if self.ranks.distributed:
            path = broadcast_object(self.ranks, path)  # the barrier: no rank leaves before rank 0 has saved
        self.saved_path = path
        # Leave fit() now: no validation pass and no end-of-epoch outputs for an epoch that did not finish
        # (Kubernetes only waits terminationGracePeriodSeconds before SIGKILL).
        raise PreemptedSignal(path)

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        self.steps_offset = 0
        if self.vote is not None:
            self.vote.epoch_break()


class PlainProgress(tf.keras.callbacks.Callback):
    """Progress lines for logs and non-terminals (Kubernetes pods): about ten per epoch."""

    def __init__(self, steps_per_epoch: int, batch_size: int, max_epoch: int) -> None:
        super().__init__()
        self.steps = steps_per_epoch
        self.every = max(1, steps_per_epoch // 10)
        self.batch_size = batch_size
        self.max_epoch = max_epoch
        self._t0 = time.monotonic()
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._t0 = time.monotonic()
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        done = batch + 1
        if done % self.every and done != self.steps:
            return
        logs = logs or {}
        rate = done * self.batch_size / max(time.monotonic() - self._t0, 1e-9)
        log.info(
            "epoch %d/%d step %d/%d: loss %.4f, acc %.4f, %.0f img/s",
            self._epoch + 1, self.max_epoch, done, self.steps, logs.get("loss", float("nan")),
            logs.get("acc", float("nan")), rate,
        )


class TrackEpochs(tf.keras.callbacks.Callback):
    """The experiment tracker's per-epoch metrics (report/tracking.py): exactly the row just written to
    training.csv, so the tracker's history and the CSV agree; placed right after EpochOutputs (chief only)."""

    def __init__(self, tracker: Any, outputs: EpochOutputs) -> None:
        super().__init__()
        self.tracker, self.outputs = tracker, outputs

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        from kestrel_trainer.report.tracking import epoch_metrics

        row = self.outputs.rows[-1] if self.outputs.rows else None
        if row is not None and int(row["epoch"]) == epoch + 1:
            self.tracker.log_metrics(epoch_metrics(row), step=epoch + 1)
