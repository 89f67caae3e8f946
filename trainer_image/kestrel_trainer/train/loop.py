"""The training loop: data -> model -> fit -> checkpoints and reports, with resume and preemption.

What varies per experiment is built by task.py; this module owns what does not: which epoch to
start from, which checkpoint to load, the callbacks that write outputs (chief rank only), the
SIGTERM path, and the final summary.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from kestrel_trainer.data import folders
from kestrel_trainer.data.check import exclude_bad_images_and_cache
from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset
from kestrel_trainer.data.sharding import steps_per_epoch
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.model_io.files import load_model, save_model
from kestrel_trainer.report.status import StatusLogger
from kestrel_trainer.spec.types import ExperimentSpec
from kestrel_trainer.train import checkpoints as ckpt
from kestrel_trainer.train import distributed as dist
from kestrel_trainer.train import model_parallel as mp
from kestrel_trainer.train.callbacks import (
    EpochOutputs,
    PlainProgress,
    PreemptedSignal,
    Preemption,
    SampleImages,
    read_csv_rows,
    write_json_atomic,
)
from kestrel_trainer.train.distributed import Ranks
from kestrel_trainer.train.regularizers import add_regularization
from kestrel_trainer.train.schedules import SpecSchedule  # noqa: F401  (registers it for checkpoint loading)
from kestrel_trainer.train.task import compile_model, make_optimizer, make_schedule

log = logging.getLogger("kestrel.train")

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what Kubernetes and shells expect
VAL_CACHE_BYTES = 512 * 2**20


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
    gpus: int = 1  # --gpus: with ranks.size, how many devices each rank owns (model parallelism)
    gpu_index: Optional[tuple[int, ...]] = None
    image_cache: str = "auto"  # decoded training images kept in memory: auto (if they fit), on, off
    model_format: str = "kestrel"  # checkpoints with a key: "kestrel" (authenticated) or "tao" (the original's .tlt)
    extra_callbacks: list = field(default_factory=list)  # library users and benchmarks: run after ours


def class_weights(labels: list[int], n_classes: int) -> np.ndarray:
    """'balanced' weights n / (n_classes * count_c): every class contributes equally to the loss."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return (len(labels) / (n_classes * np.maximum(counts, 1))).astype(np.float32)


def _with_sample_weights(ds: tf.data.Dataset, weights: np.ndarray) -> tf.data.Dataset:
    w = tf.constant(weights)
    return ds.map(lambda x, y: (x, y, tf.linalg.matvec(y, w)), num_parallel_calls=tf.data.AUTOTUNE)


# Debugging aid for data-parallel runs: when set, each rank writes into DIR its process id (rank<r>.pid),
# the path of every training image it feeds to the model (rank<r>_epoch<e>.txt, one line per image, in
# order) and, at the end, its own copy of the weights (rank<r>_final.h5). Outputs proper stay chief-only.
DEBUG_DIR_ENV = "KESTREL_DEBUG_RANKS_DIR"


def _record_paths(ds: tf.data.Dataset, folder: str, rank: int, first_epoch: int, spe: int,
                  skip: int) -> tf.data.Dataset:
    """Write each batch's paths (ds yields x, y, paths) to the rank's per-epoch file, then drop them."""
    os.makedirs(folder, exist_ok=True)
    counter = {"batch": skip}

    def write(paths: tf.Tensor) -> np.int64:
        epoch = first_epoch + counter["batch"] // spe + 1
        counter["batch"] += 1
        with open(os.path.join(folder, f"rank{rank}_epoch{epoch}.txt"), "a", encoding="utf-8") as fh:
            fh.writelines(p.decode("utf-8") + "\n" for p in paths.numpy())
        return np.int64(0)

    def record(x: tf.Tensor, y: tf.Tensor, paths: tf.Tensor):
        done = tf.py_function(write, [paths], tf.int64)
        with tf.control_dependencies([done]):
            return tf.identity(x), y

    return ds.map(record)  # sequential map: batches are written in the order they are fed


def _rebase_schedule(model: tf.keras.Model, spec: ExperimentSpec, resume: ckpt.Checkpoint, epochs_done: int,
                     steps_done: int, spe: int, total_steps: int, n_ranks: int) -> int:
    """Continue with the current spec's schedule at this plan's position; returns the steps to skip.

    As the original, a resumed run follows the spec it is given now (more epochs, another LR), not
    the schedule saved in the checkpoint, from step epochs_done * steps_per_epoch. If the batch size,
    the ranks or the data changed, the checkpoint's step count no longer maps onto this plan: a
    partial epoch then restarts from its beginning (its batches would be different ones) and says so.
    """
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
    optimizer.learning_rate = make_schedule(spec, total_steps, n_ranks)
    return steps_done


def _build_model(
    spec: ExperimentSpec, n_classes: int, resume: Optional[ckpt.Checkpoint], opts: TrainOptions, total_steps: int,
    devices: list[str], plan: mp.DevicePlan,
) -> tf.keras.Model:
    ranks = opts.ranks
    wrap = dist.optimizer_wrapper(ranks, loss_scaling=_amp_active(opts.use_amp))
    optimizer_state: Optional[list[np.ndarray]] = None
    if resume is not None:
        model = load_model(resume.path, opts.key, compile=True)  # SpecSchedule is registered by its import
        optimizer = model.optimizer
        if optimizer is None:
            # The original's checkpoints (channels-first, its Keras 2.2 optimizer) and those written with
            # --format tao carry no state we can use: weights come from the file, the optimizer starts fresh
            # at the schedule's position.
            log.warning("%s: no optimizer state usable here; resuming its weights with a fresh %s optimizer "
                        "(momentum and moments restart)", resume.path, type(spec.train.optimizer).__name__)
            optimizer = make_optimizer(spec, total_steps=total_steps, n_ranks=opts.ranks.size)
        elif wrap is not None or plan.split:
            # A wrapped (Horovod, loss scaling) or re-placed model needs a new optimizer: carry the state over.
            optimizer_state = optimizer.get_weights()
            optimizer = mp.rebuild_optimizer(optimizer)
        out = model.output_shape[-1]
        if out != n_classes:
            raise KestrelError(
                f"{resume.path}: has {out} classes but the dataset has {n_classes}; "
                "use a new results folder or --init_epoch 1 to start over", exit_code=2)
    else:
        from kestrel_trainer.models.weights import build_with_pretrained

        model, report = build_with_pretrained(spec.model, n_classes, spec.train.pretrained_model_path or None, opts.key)
        if report is not None:
            log.info("pretrained weights: %s", report.summary())
        optimizer = make_optimizer(spec, total_steps=total_steps, n_ranks=opts.ranks.size)
    if plan.split:
        model, rows = mp.place_model(model, devices, plan.fractions, spec.train.batch_size_per_gpu,
                                     bytes_per_value=2 if _amp_active(opts.use_amp) else 4)
        if ranks.is_chief:
            log.info("model parallelism over %d devices per rank:\n%s", len(devices),
                     mp.format_table(rows, spec.train.batch_size_per_gpu, plan.gpu_ids or None))
    compile_model(model, spec, optimizer, wrap_optimizer=wrap)
    if optimizer_state is not None:
        mp.restore_optimizer_state(model.optimizer, model.trainable_variables, optimizer_state)
    covered = add_regularization(model, spec.train.reg)
    if covered:
        log.info("%s regularization (weight_decay %g) on %d kernels (%s)", spec.train.reg.type,
                 spec.train.reg.weight_decay, len(covered), ",".join(spec.train.reg.scope))
    return model


def _amp_active(use_amp: bool) -> bool:
    return use_amp and bool(tf.config.list_physical_devices("GPU"))


def _configure_precision(use_amp: bool) -> None:
    if not use_amp:
        return
    if not _amp_active(use_amp):
        log.warning("--use_amp ignored: no GPU visible, training in float32 on CPU")
        return
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    log.info("automatic mixed precision on: float16 compute, float32 variables, dynamic loss scaling")


def run_training(spec: ExperimentSpec, opts: TrainOptions) -> dict[str, Any]:
    """Train as the spec says; returns the summary also written to RESULTS/summary.json."""
    started = time.monotonic()  # summary.json wall_seconds: the whole run, a duration
    ranks = opts.ranks
    # devices first: TensorFlow fixes them when it runs its first op
    plan = mp.plan_devices(max(opts.gpus, ranks.size), ranks.size, ranks.local_rank, spec.train.model_parallelism,
                           len(tf.config.list_physical_devices("GPU")), opts.gpu_index)
    devices = mp.configure_devices(plan)
    results = os.path.abspath(opts.results_dir)
    weights_dir = os.path.join(results, "weights")
    if ranks.is_chief:
        os.makedirs(weights_dir, exist_ok=True)
    status = StatusLogger(os.path.join(results, "status.json"))
    tf.keras.utils.set_random_seed(spec.train.random_seed)
    _configure_precision(opts.use_amp)

    train, val = folders.scan_train_val(spec.train.train_dataset_path, spec.train.val_dataset_path,
                                        opts.classmap_path)
    log.info("checking that all %d images decode, each rank its shard (refusing bad ones unless "
             "--skip-bad-images)", len(train.files) + len(val.files))

    def check(data: folders.ImageFolder, cache: str, name: str):
        # Each rank decodes its own shard and the ranks share what failed (one collective per set).
        return exclude_bad_images_and_cache(
            data.files, data.labels, skip_bad_images=opts.skip_bad_images, channels=spec.model.input_channels,
            rank=ranks.rank, size=ranks.size, cache=cache, n_workers=spec.train.n_workers, log=log.warning,
            info=log.info, gather=lambda failed: dist.allgather_list(ranks, failed, f"kestrel_bad_{name}"))

    check_started = time.monotonic()
    train_files, train_labels, skipped_train, decoded = check(train, opts.image_cache, "train")
    log.info("training images checked%s in %.1f s", " and cached" if decoded is not None else "",
             time.monotonic() - check_started)
    val_files, val_labels, skipped_val, _ = check(val, "off", "val")
    n_classes = train.n_classes
    if ranks.is_chief:
        folders.write_classmap(os.path.join(results, folders.CLASSMAP_FILENAME), train.classes)
    batch = spec.train.batch_size_per_gpu
    spe = steps_per_epoch(len(train_files), batch, ranks.size)
    n_epochs = spec.train.n_epochs
    total_steps = spe * n_epochs
    arch = spec.model.arch

    resume = (ckpt.choose_resume(weights_dir, arch, opts.init_epoch, spec.train.pretrained_model_path or "")
              if ranks.is_chief else None)
    if ranks.distributed:  # every rank resumes from the checkpoint rank 0 chose
        resume = dist.broadcast_object(ranks, resume)
        if resume is not None and not os.path.exists(resume.path):
            raise KestrelError(f"rank {ranks.rank} cannot read {resume.path}, which rank 0 resumes from: the "
                               "results folder must be shared by all ranks", exit_code=2)
    epochs_done = resume.epochs_done if resume else 0
    steps_done = resume.steps_into_epoch if resume else 0
    if resume is not None:
        how = ("--init_epoch with pretrained_model_path, as the original" if resume.from_pretrained
               else "--init_epoch" if opts.init_epoch else "found in the results folder (no --init_epoch given)")
        log.info("resuming from %s (%s): %d epochs%s done", resume.path, how, epochs_done,
                 f" and {steps_done} steps" if steps_done else "")
    if epochs_done >= n_epochs:
        log.info("all %d epochs are already done in %s; nothing to train", n_epochs, results)
        summary_path = os.path.join(results, "summary.json")
        if os.path.exists(summary_path):
            import json

            with open(summary_path, encoding="utf-8") as fh:
                return json.load(fh)
    model = _build_model(spec, n_classes, resume, opts, total_steps, devices, plan)
    if resume is not None:
        steps_done = _rebase_schedule(model, spec, resume, epochs_done, steps_done, spe, total_steps, ranks.size)
    dist.broadcast_state(ranks, model)
    log.info(
        "training %s (%s params) on %d images of %d classes (%d val), %d epochs x %d steps of %d, %d rank(s)",
        spec.model.name, f"{model.count_params():,}", len(train_files), n_classes, len(val_files), n_epochs, spe,
        batch, ranks.size,
    )
    if ranks.is_chief:
        status.write("STARTED", "Starting Training Loop.")

    key = opts.key

    def save_epoch(number: int) -> str:
        return str(save_model(model, ckpt.epoch_path(weights_dir, arch, number, key), key, format=opts.model_format))

    def save_partial(number: int, steps: int) -> str:
        return str(save_model(model, ckpt.partial_path(weights_dir, arch, number, steps, key), key))

    rows = [r for r in read_csv_rows(os.path.join(results, "training.csv")) if int(r["epoch"]) <= epochs_done]
    outputs = EpochOutputs(results, n_epochs, save_epoch, status, _cluster_reporter(), rows)
    outputs.last_checkpoint = resume.path if resume is not None else None  # until this run writes one
    preemption = Preemption(save_partial, steps_offset=steps_done)
    verbose = sys.stdout.isatty() if opts.verbose is None else opts.verbose
    callbacks: list[tf.keras.callbacks.Callback] = []
    if ranks.distributed:  # first: the chief's outputs below see the job's metrics, not its own shard's
        callbacks.append(dist.metric_average_callback(ranks, len(train_files), len(val_files)))
    if ranks.is_chief:
        callbacks += [
            outputs,
            # visualizer.weight_histograms: weight histograms every epoch (as the original, whether or not
            # `enabled` is set)
            tf.keras.callbacks.TensorBoard(os.path.join(results, "events"), update_freq="epoch",
                                           profile_batch=0, write_graph=False,
                                           histogram_freq=1 if spec.train.visualizer.weight_histograms else 0),
            preemption,
        ]
        if not verbose:
            callbacks.append(PlainProgress(spe, batch * ranks.size, n_epochs))

    vis = spec.train.visualizer
    if ranks.is_chief and vis.enabled and vis.num_images > 0:
        n_show = min(vis.num_images, len(train_files))
        sample = make_dataset(train_files[:n_show], train_labels[:n_show], n_classes,
                              replace(PipelineOptions.for_training(spec.model, spec.train, n_show), n_epochs=1))
        callbacks.append(SampleImages(os.path.join(results, "events", "images"),
                                      lambda: next(iter(sample))[0], n_show))
    callbacks += list(opts.extra_callbacks)

    weights = class_weights(train_labels, n_classes) if spec.train.class_weighting == "balanced" else None
    if weights is not None:
        log.info("class weighting 'balanced': %s", ", ".join(f"{c}={w:.3f}" for c, w in zip(train.classes, weights)))

    seen_dir = os.environ.get(DEBUG_DIR_ENV)
    if seen_dir:
        os.makedirs(seen_dir, exist_ok=True)
        with open(os.path.join(seen_dir, f"rank{ranks.rank}.pid"), "w", encoding="utf-8") as fh:
            fh.write(str(os.getpid()))

    def train_data(first_epoch: int, skip: int = 0) -> tf.data.Dataset:
        options = replace(PipelineOptions.for_training(spec.model, spec.train, batch), with_paths=bool(seen_dir))
        ds = make_dataset(train_files, train_labels, n_classes, options, rank=ranks.rank, size=ranks.size,
                          initial_epoch=first_epoch, decoded=decoded)
        if skip:
            ds = ds.skip(skip)
        if seen_dir:
            ds = _record_paths(ds, seen_dir, ranks.rank, first_epoch, spe, skip)
        return _with_sample_weights(ds, weights) if weights is not None else ds

    val_options = PipelineOptions.for_evaluation(spec.model, spec.train, batch)
    val_ds = make_dataset(val_files, val_labels, n_classes, val_options, rank=ranks.rank, size=ranks.size)
    h, w, c = spec.model.input_shape
    if len(val_files) * h * w * c * 4 <= VAL_CACHE_BYTES:
        val_ds = val_ds.cache()  # decoded once; small validation sets only (memory)

    preemption.install()
    try:
        fit_kwargs = dict(validation_data=val_ds, callbacks=callbacks, verbose=1 if verbose and ranks.is_chief else 0)
        first = epochs_done
        if steps_done:
            model.fit(train_data(first, skip=steps_done), initial_epoch=first, epochs=first + 1,
                      steps_per_epoch=spe - steps_done, **fit_kwargs)
            first += 1
        if first < n_epochs and preemption.saved_path is None:
            model.fit(train_data(first), initial_epoch=first, epochs=n_epochs, steps_per_epoch=spe, **fit_kwargs)
    except PreemptedSignal:
        pass  # handled below, after the signal handler is restored
    except KeyboardInterrupt:
        if ranks.is_chief:
            status.write("FAILURE", "Training was interrupted")  # the original's words
        raise
    except Exception as err:
        if ranks.is_chief:
            status.write("FAILURE", str(err))  # the original writes the error's text
        raise
    finally:
        preemption.uninstall()

    if preemption.saved_path is not None:
        if ranks.is_chief:
            status.write("FAILURE", f"Preempted by signal {preemption.requested}; checkpoint {preemption.saved_path}")
        raise Preempted(
            f"stopped by signal {preemption.requested}: checkpoint written to {preemption.saved_path}; "
            "run the same command again to resume from it"
        )

    if seen_dir:
        model.save_weights(os.path.join(seen_dir, f"rank{ranks.rank}_final.h5"))
    rows = outputs.rows
    val_accs = [float(r["val_acc"]) for r in rows if r.get("val_acc") not in (None, "")]
    best = int(np.argmax(val_accs)) if val_accs else None
    summary = {
        "model": spec.model.name,
        "epochs": n_epochs,
        "best_val_acc": val_accs[best] if best is not None else None,
        "best_epoch": int(rows[best]["epoch"]) if best is not None else None,
        "last_val_acc": val_accs[-1] if val_accs else None,
        "last_val_loss": float(rows[-1]["val_loss"]) if rows and rows[-1].get("val_loss") not in (None, "") else None,
        "final_model": outputs.last_checkpoint,
        "n_classes": n_classes,
        "train_images": len(train_files),
        "val_images": len(val_files),
        "skipped_bad_images": skipped_train + skipped_val,
        "ranks": ranks.size,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    if ranks.is_chief:
        write_json_atomic(os.path.join(results, "summary.json"), summary)
        # The original evaluates the final model on the validation set once more; the last epoch's validation
        # pass already did exactly that (same weights, same images), so its numbers are recorded.
        status.final_evaluation(summary["last_val_loss"], summary["last_val_acc"])
        log.info("done: best val_acc %.4f (epoch %s), last %.4f, %s", summary["best_val_acc"] or 0.0,
                 summary["best_epoch"], summary["last_val_acc"] or 0.0, summary["final_model"])
    return summary


def _cluster_reporter() -> Optional[Any]:
    """The in-cluster status reporter when the operator set its environment, else None."""
    try:
        from kestrel_trainer.report.cluster_status import ClusterStatusReporter
    except ImportError:
        return None
    return ClusterStatusReporter.from_env()
