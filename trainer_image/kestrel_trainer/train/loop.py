"""The training loop: devices, epochs, checkpoints and resume, callbacks, preemption and the summary.

What varies per experiment (inputs, model, loss, metrics, optimizer) is built by task.py; this module
owns what does not: which epoch to start from and which checkpoint to load, the callbacks that write
outputs (chief rank only), the SIGTERM path, and the final summary. `run_training` reads as the run:
devices -> data -> start point -> model -> callbacks -> fit -> summary.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import tensorflow as tf

from kestrel_trainer import storage
from kestrel_trainer.data import folders
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.model_io.files import save_model
from kestrel_trainer.models.conv_taps import sliced_convolutions
from kestrel_trainer.report.status import StatusLogger
from kestrel_trainer.spec.contract import PREEMPTED_EXIT_CODE, stopped_message
from kestrel_trainer.spec.types import ExperimentSpec
from kestrel_trainer.train import checkpoints as ckpt
from kestrel_trainer.train import debug_ranks
from kestrel_trainer.train import distributed as dist
from kestrel_trainer.train import model_parallel as mp
from kestrel_trainer.train.callbacks import (
    ClusterProgress,
    EpochOutputs,
    PlainProgress,
    PreemptedSignal,
    Preemption,
    SampleImages,
    TrackEpochs,
    read_csv_rows,
    row_metrics,
    write_json_atomic,
)
from kestrel_trainer.train.distributed import Ranks
from kestrel_trainer.train.task import ClassificationTask, TrainingData, make_schedule

log = logging.getLogger("kestrel.train")



class Preempted(KestrelError):
    """Stopped by SIGTERM after writing a checkpoint; a restart resumes from it."""

    exit_code = PREEMPTED_EXIT_CODE


@dataclass
class TrainOptions:
    results_dir: str
    key: Optional[str] = None
    init_epoch: Optional[int] = None
    classmap_path: Optional[str] = None
    skip_bad_images: bool = False
    use_amp: bool = False
    verbose: Optional[bool] = None  # progress bar; None: when stdout is a terminal
    ranks: Ranks = field(default_factory=Ranks)
    gpus: int = 1  # --gpus as resolved by train.devices.check (0: the CPU): with ranks.size, devices per rank
    gpu_index: Optional[tuple[int, ...]] = None
    image_cache: str = "auto"  # decoded training images kept in memory: auto (if they fit), on, off
    model_format: str = "kestrel"  # checkpoints with a key: "kestrel" (authenticated) or "tao" (the original's .tlt)
    tracker: Any = None  # report.tracking.MlflowTracker (chief only): params, per-epoch metrics, artifacts
    spec_file: Optional[str] = None  # logged as an artifact by the tracker
    extra_callbacks: list = field(default_factory=list)  # library users and benchmarks: run after ours


@dataclass(frozen=True)
class Start:
    """Where a run starts: the checkpoint it resumes from (None: a new run) and the progress that holds."""

    checkpoint: Optional[ckpt.Checkpoint] = None
    epochs_done: int = 0
    steps_done: int = 0  # batches of epoch epochs_done + 1 already done (a preemption checkpoint)


@dataclass(frozen=True)
class _Run:
    """What the steps of one training run share."""

    spec: ExperimentSpec
    opts: TrainOptions
    task: ClassificationTask
    results: str  # the results folder, absolute
    status: StatusLogger

    @property
    def ranks(self) -> Ranks:
        return self.opts.ranks

    @property
    def weights_dir(self) -> str:
        return os.path.join(self.results, "weights")

    @property
    def n_epochs(self) -> int:
        return self.spec.train.n_epochs

    @property
    def verbose(self) -> bool:
        """A progress bar (terminals) instead of PlainProgress lines (logs, pods)."""
        return sys.stdout.isatty() if self.opts.verbose is None else self.opts.verbose


def run_training(spec: ExperimentSpec, opts: TrainOptions) -> dict[str, Any]:
    """Train as the spec says; returns the summary also written to RESULTS/summary.json."""
    started = time.monotonic()  # summary.json wall_seconds: the whole run, a duration
    devices, plan = _configure_devices(spec, opts)  # first: TensorFlow fixes them when it runs its first op
    run = _open_run(spec, opts)
    data = run.task.load_data(opts.classmap_path, opts.skip_bad_images, opts.image_cache)
    if run.ranks.is_chief:
        folders.write_classmap(os.path.join(run.results, folders.CLASSMAP_FILENAME), data.classes)
    spe = run.task.steps_per_epoch(data)
    start = _choose_start(run)
    if start.epochs_done >= run.n_epochs:
        log.info("all %d epochs are already done in %s; nothing to train", run.n_epochs, run.results)
        previous = _read_summary(run.results)
        if previous is not None:
            return previous
    model = run.task.build_model(data.n_classes, spe * run.n_epochs, devices, plan, start.checkpoint)
    if start.checkpoint is not None:
        start = _rebase_schedule(run, model, start, spe)
    dist.broadcast_state(run.ranks, model)
    _announce(run, model, data, spe)
    if run.ranks.is_chief and opts.tracker is not None:
        from kestrel_trainer.report.tracking import spec_params

        opts.tracker.log_params(spec_params(spec.fields))
    outputs, preemption = _checkpointing(run, model, start)
    callbacks = _callbacks(run, data, spe, start, outputs, preemption)
    _fit(run, model, data, spe, start, callbacks, preemption)
    if preemption.saved_path is not None:
        if run.ranks.is_chief:  # fit() left without on_train_end: the curves of the epochs done
            outputs.draw_curves()
        _stop_preempted(run, preemption)
    return _finish(run, model, data, outputs, started)


def _configure_devices(spec: ExperimentSpec, opts: TrainOptions) -> tuple[list[str], mp.DevicePlan]:
    """This rank's devices (model parallelism: several per rank), made visible to TensorFlow."""
    ranks = opts.ranks
    # opts.gpus is resolved (train.devices.check): 0 is the CPU, even where GPUs are visible
    visible = len(tf.config.list_physical_devices("GPU")) if opts.gpus else 0
    plan = mp.plan_devices(max(opts.gpus, ranks.size), ranks.size, ranks.local_rank, spec.train.model_parallelism,
                           visible, opts.gpu_index)
    return mp.configure_devices(plan), plan


def create_results_folder(results_dir: str) -> str:
    """RESULTS/weights made (every rank, see _open_run), or the one line a user can act on; the absolute path."""
    results = os.path.abspath(results_dir)
    try:  # a folder the trainer's user cannot write is the user's to fix: one line
        os.makedirs(os.path.join(results, "weights"), exist_ok=True)
    except OSError as err:
        raise KestrelError(f"-r/--results_dir {results}: cannot create {err.filename or results} "
                           f"({err.strerror or err}) as uid {os.getuid()}: give the folder to that user, or in "
                           "the cluster set spec.volumes.results.fixOwnership (docs/install.md)",
                           exit_code=2) from None
    return results


def _open_run(spec: ExperimentSpec, opts: TrainOptions) -> _Run:
    """The results folder (every rank, see below), status.json, the global seed and the precision policy."""
    # Every rank, not only the chief: on a folder the trainer's user cannot write (a fresh root-owned volume) each
    # rank stops here with the same one line and exit 2, instead of the others dying in their first collective
    # once the chief is gone (mpirun would report that rank's exit 1 and the operator a lost rank). exist_ok: the
    # ranks share the volume; on another rank's own disk (no shared volume, or an s3:// mirror) an empty folder.
    results = create_results_folder(opts.results_dir)
    task = ClassificationTask(spec, opts.ranks, key=opts.key, use_amp=opts.use_amp)
    run = _Run(spec, opts, task, results, StatusLogger(os.path.join(results, "status.json")))
    tf.keras.utils.set_random_seed(spec.train.random_seed)
    task.configure_precision()
    return run


def _choose_start(run: _Run) -> Start:
    """The checkpoint rank 0 resumes from (every rank resumes from the same one) and the progress it holds."""
    ranks, opts = run.ranks, run.opts
    if ranks.is_chief:  # a results folder in object storage: the bucket's checkpoint (docs/storage.md)
        ckpt.fetch_from_storage(run.weights_dir, run.spec.model.arch, opts.init_epoch)
    resume = (ckpt.choose_resume(run.weights_dir, run.spec.model.arch, opts.init_epoch,
                                 run.spec.train.pretrained_model_path or "")
              if ranks.is_chief else None)
    if ranks.distributed:
        resume = dist.broadcast_object(ranks, resume)
        if resume is not None and not storage.fetch(resume.path):  # s3://: brought in from the bucket
            raise KestrelError(f"rank {ranks.rank} cannot read {resume.path}, which rank 0 resumes from: the "
                               "results folder must be shared by all ranks", exit_code=2)
    if resume is None:
        return Start()
    start = Start(resume, resume.epochs_done, resume.steps_into_epoch)
    how = ("--init_epoch with pretrained_model_path, as the original" if resume.from_pretrained
           else "--init_epoch" if opts.init_epoch else "found in the results folder (no --init_epoch given)")
    log.info("resuming from %s (%s): %d epochs%s done", resume.path, how, start.epochs_done,
             f" and {start.steps_done} steps" if start.steps_done else "")
    return start


def _read_summary(results: str) -> Optional[dict[str, Any]]:
    """A finished run's summary.json, or None."""
    path = os.path.join(results, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _rebase_schedule(run: _Run, model: tf.keras.Model, start: Start, spe: int) -> Start:
    """Continue with the current spec's schedule at this plan's position; returns where training resumes.

    As the original, a resumed run follows the spec it is given now (more epochs, another LR), not
    the schedule saved in the checkpoint, from step epochs_done * steps_per_epoch. If the batch size,
    the ranks or the data changed, the checkpoint's step count no longer maps onto this plan: a
    partial epoch then restarts from its beginning (its batches would be different ones) and says so.
    """
    resume, epochs_done, steps_done = start.checkpoint, start.epochs_done, start.steps_done
    optimizer = model.optimizer
    done = int(optimizer.iterations.numpy())
    if resume.from_pretrained or done == 0:
        pass  # the original's resume or a fresh optimizer: the schedule starts at this plan's position
    elif done != epochs_done * spe + steps_done:
        if steps_done:
            log.warning("%s was written %d steps into epoch %d with another number of steps per epoch (batch "
                        "size, ranks or data changed; now %d): epoch %d restarts from its beginning",
                        resume.path, steps_done, epochs_done + 1, spe, epochs_done + 1)
            steps_done = 0
        else:
            log.warning("the steps per epoch changed since %s (%d steps for %d epochs, now %d per epoch): "
                        "the schedule continues at epoch %d of this plan", resume.path, done, epochs_done, spe,
                        epochs_done + 1)
    optimizer.iterations.assign(epochs_done * spe + steps_done)
    optimizer.learning_rate = make_schedule(run.spec, spe * run.n_epochs, run.ranks.size)
    return Start(resume, epochs_done, steps_done)


def _announce(run: _Run, model: tf.keras.Model, data: TrainingData, spe: int) -> None:
    log.info(
        "training %s (%s params) on %d images of %d classes (%d val), %d epochs x %d steps of %d, %d rank(s)",
        run.spec.model.name, f"{model.count_params():,}", len(data.train_files), data.n_classes,
        len(data.val_files), run.n_epochs, spe, run.spec.train.batch_size_per_gpu, run.ranks.size,
    )
    if run.ranks.is_chief:
        run.status.write("STARTED", "Starting Training Loop.")


def _checkpointing(run: _Run, model: tf.keras.Model, start: Start) -> tuple[EpochOutputs, Preemption]:
    """The callbacks that write checkpoints: one per completed epoch (with the records that point at it)
    and one when a stop request (SIGTERM) stops the run mid-epoch, on every rank (the ranks agree on the step;
    rank 0 saves)."""
    key, arch, weights_dir = run.opts.key, run.spec.model.arch, run.weights_dir

    def save_epoch(number: int) -> str:
        return str(save_model(model, ckpt.epoch_path(weights_dir, arch, number, key), key,
                              format=run.opts.model_format))

    def save_partial(number: int, steps: int) -> str:
        return str(save_model(model, ckpt.partial_path(weights_dir, arch, number, steps, key), key))

    def record_stop(reason: str, path: str) -> None:  # before any rank leaves (mpirun then stops the others)
        run.status.write("FAILURE", f"Preempted by {reason}; checkpoint {path}")

    rows = [r for r in read_csv_rows(os.path.join(run.results, "training.csv"))
            if int(r["epoch"]) <= start.epochs_done]
    outputs = EpochOutputs(run.results, run.n_epochs, save_epoch, run.status, rows)
    outputs.last_checkpoint = start.checkpoint.path if start.checkpoint is not None else None  # until a new one
    chief = run.ranks.is_chief
    return outputs, Preemption(save_partial if chief else None, steps_offset=start.steps_done, ranks=run.ranks,
                               on_saved=record_stop if chief else None)


def _callbacks(run: _Run, data: TrainingData, spe: int, start: Start, outputs: EpochOutputs,
               preemption: Preemption) -> list[tf.keras.callbacks.Callback]:
    """In order: the ranks' metric averaging, then (chief only) outputs and TensorBoard, preemption (every rank),
    then (chief only) the cluster status (in a cluster), progress lines and sample images, then the caller's."""
    ranks, vis = run.ranks, run.spec.train.visualizer
    callbacks: list[tf.keras.callbacks.Callback] = []
    if ranks.distributed:  # first: the chief's outputs below see the job's metrics, not its own shard's
        callbacks.append(dist.metric_average_callback(ranks, len(data.train_files), len(data.val_files)))
    if ranks.is_chief:
        callbacks += [
            outputs,
            *([TrackEpochs(run.opts.tracker, outputs)] if run.opts.tracker is not None else []),
            # visualizer.weight_histograms: weight histograms every epoch (as the original, whether or not
            # `enabled` is set)
            tf.keras.callbacks.TensorBoard(os.path.join(run.results, "events"), update_freq="epoch",
                                           profile_batch=0, write_graph=False,
                                           histogram_freq=1 if vis.weight_histograms else 0),
        ]
    callbacks.append(preemption)  # every rank: the ranks agree on a stop; rank 0 saves
    if ranks.is_chief:
        reporter = _cluster_reporter()
        if reporter is not None:  # after outputs (an epoch's checkpoint exists) and preemption (SIGTERM first)
            callbacks.append(ClusterProgress(reporter, run.n_epochs, spe, start.epochs_done, start.steps_done,
                                             row_metrics(outputs.rows[-1] if outputs.rows else None)))
        if not run.verbose:
            callbacks.append(PlainProgress(spe, run.spec.train.batch_size_per_gpu * ranks.size, run.n_epochs))
    if ranks.is_chief and vis.enabled and vis.num_images > 0:
        n_show = min(vis.num_images, len(data.train_files))
        callbacks.append(SampleImages(os.path.join(run.results, "events", "images"),
                                      run.task.sample_images(data, n_show), n_show, run.opts.tracker))
    return callbacks + list(run.opts.extra_callbacks)


def _fit(run: _Run, model: tf.keras.Model, data: TrainingData, spe: int, start: Start,
         callbacks: list[tf.keras.callbacks.Callback], preemption: Preemption) -> None:
    """Train from `start` to the last epoch; SIGTERM stops it after a checkpoint, a failure is recorded."""
    weights = run.task.sample_weights(data)
    record_dir = debug_ranks.debug_dir()
    if record_dir:
        debug_ranks.write_pid(record_dir, run.ranks.rank)

    def train_data(first_epoch: int, skip: int = 0) -> tf.data.Dataset:
        return run.task.build_inputs(data, first_epoch, skip, weights=weights, record_dir=record_dir)

    fit_kwargs = dict(validation_data=run.task.build_validation_inputs(data), callbacks=callbacks,
                      verbose=1 if run.verbose and run.ranks.is_chief else 0)
    preemption.install()
    try:
        with sliced_convolutions():  # tiny feature maps: same maths, no pathological CPU backward pass
            _fit_epochs(model, train_data, start, run.n_epochs, spe, preemption, fit_kwargs)
    except PreemptedSignal:
        pass  # handled by the caller, after the signal handler is restored
    except KeyboardInterrupt:
        if run.ranks.is_chief:
            run.status.write("FAILURE", "Training was interrupted")  # the original's words
        raise
    except Exception as err:
        if run.ranks.is_chief:
            run.status.write("FAILURE", str(err))  # the original writes the error's text
        raise
    finally:
        preemption.uninstall()


def _fit_epochs(model: tf.keras.Model, train_data: Callable[..., tf.data.Dataset], start: Start, n_epochs: int,
                spe: int, preemption: Preemption, fit_kwargs: dict[str, Any]) -> None:
    """The rest of a partial epoch first (its own fit: fewer steps), then the remaining whole epochs."""
    first = start.epochs_done
    if start.steps_done and first < n_epochs:
        model.fit(train_data(first, skip=start.steps_done), initial_epoch=first, epochs=first + 1,
                  steps_per_epoch=spe - start.steps_done, **fit_kwargs)
        first += 1
    if first < n_epochs and preemption.saved_path is None:
        model.fit(train_data(first), initial_epoch=first, epochs=n_epochs, steps_per_epoch=spe, **fit_kwargs)


def _stop_preempted(run: _Run, preemption: Preemption) -> None:
    """Exit 143 (status.json has the stop already: rank 0 wrote it before any rank left fit)."""
    raise Preempted(stopped_message(preemption.reason, str(preemption.saved_path)))


def _finish(run: _Run, model: tf.keras.Model, data: TrainingData, outputs: EpochOutputs,
            started: float) -> dict[str, Any]:
    """summary.json and the final status (chief), the debugging copy of the weights; returns the summary."""
    record_dir = debug_ranks.debug_dir()
    if record_dir:
        debug_ranks.save_final_weights(model, record_dir, run.ranks.rank)
    summary = _summary(run, data, outputs.rows, outputs.last_checkpoint, started)
    if run.ranks.is_chief:
        # final_model as the user named the folder (s3://... for a results folder in object storage)
        write_json_atomic(os.path.join(run.results, "summary.json"),
                          {**summary, "final_model": storage.display(summary["final_model"])})
        # The original evaluates the final model on the validation set once more; the last epoch's validation
        # pass already did exactly that (same weights, same images), so its numbers are recorded.
        run.status.final_evaluation(summary["last_val_loss"], summary["last_val_acc"])
        _track_outputs(run, summary)
        log.info("done: best val_acc %.4f (epoch %s), last %.4f, %s", summary["best_val_acc"] or 0.0,
                 summary["best_epoch"], summary["last_val_acc"] or 0.0, summary["final_model"])
    return summary


def _track_outputs(run: _Run, summary: dict[str, Any]) -> None:
    """The tracker's end of training: the summary's numbers and the artifacts (final model, curves, spec)."""
    tracker = run.opts.tracker
    if tracker is None:
        return
    numbers = {name: summary.get(name) for name in ("best_val_acc", "best_epoch", "wall_seconds")}
    tracker.log_metrics({name: value for name, value in numbers.items() if value is not None}, step=run.n_epochs)
    tracker.log_artifacts([summary.get("final_model")], "model")
    tracker.log_artifacts([os.path.join(run.results, "training_curves.png"), os.path.join(run.results, "summary.json"),
                           os.path.join(run.results, "training.csv"), run.opts.spec_file])


def _summary(run: _Run, data: TrainingData, rows: list[dict[str, Any]], final_model: Optional[str],
             started: float) -> dict[str, Any]:
    """What summary.json records: the best and last validation numbers, the final checkpoint, the data."""
    val_accs = [float(r["val_acc"]) for r in rows if r.get("val_acc") not in (None, "")]
    best = int(np.argmax(val_accs)) if val_accs else None
    return {
        "model": run.spec.model.name,
        "epochs": run.n_epochs,
        "best_val_acc": val_accs[best] if best is not None else None,
        "best_epoch": int(rows[best]["epoch"]) if best is not None else None,
        "last_val_acc": val_accs[-1] if val_accs else None,
        "last_val_loss": float(rows[-1]["val_loss"]) if rows and rows[-1].get("val_loss") not in (None, "") else None,
        "final_model": final_model,
        "n_classes": data.n_classes,
        "train_images": len(data.train_files),
        "val_images": len(data.val_files),
        "skipped_bad_images": data.skipped,
        "ranks": run.ranks.size,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def _cluster_reporter() -> Optional[Any]:
    """The in-cluster status reporter when the operator set its environment, else None."""
    try:
        from kestrel_trainer.report.cluster_status import ClusterStatusReporter
    except ImportError:
        return None
    return ClusterStatusReporter.from_env()
