"""The training task: what varies per experiment, built from the spec (TF Model Garden's base_task).

The loss (make_loss), the metrics (make_metrics), the optimizer and its schedule (make_optimizer,
make_schedule) are plain functions of the spec; `ClassificationTask` builds, for one rank, the inputs
(the checked data and its tf.data pipelines) and the model (new, with pretrained weights, or from a
checkpoint; placed over devices, compiled with that loss and those metrics, regularized). The loop
(loop.py) owns what does not vary: devices, epochs, checkpoints and resume, callbacks, preemption,
the summary.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from kestrel_trainer.data import folders
from kestrel_trainer.data.check import exclude_bad_images_and_cache
from kestrel_trainer.data.decoded import DecodedImages
from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset
from kestrel_trainer.data.sharding import steps_per_epoch
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.model_io.files import load_model
from kestrel_trainer.spec.types import AdamSpec, ExperimentSpec, RmspropSpec, SgdSpec
from kestrel_trainer.train import checkpoints as ckpt
from kestrel_trainer.train import debug_ranks
from kestrel_trainer.train import distributed as dist
from kestrel_trainer.train import model_parallel as mp
from kestrel_trainer.train.distributed import Ranks
from kestrel_trainer.train.regularizers import add_regularization
from kestrel_trainer.train.schedules import SpecSchedule

log = logging.getLogger("kestrel.train")

VAL_CACHE_BYTES = 512 * 2**20  # validation sets whose decoded images fit are decoded once, not every epoch


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


def class_weights(labels: list[int], n_classes: int) -> np.ndarray:
    """'balanced' weights n / (n_classes * count_c): every class contributes equally to the loss."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return (len(labels) / (n_classes * np.maximum(counts, 1))).astype(np.float32)


def _with_sample_weights(ds: tf.data.Dataset, weights: np.ndarray) -> tf.data.Dataset:
    w = tf.constant(weights)
    return ds.map(lambda x, y: (x, y, tf.linalg.matvec(y, w)), num_parallel_calls=tf.data.AUTOTUNE)


@dataclass(frozen=True)
class TrainingData:
    """The training and validation examples that passed the bad-image check, in the classmap's order."""

    classes: tuple[str, ...]
    train_files: list[str]
    train_labels: list[int]
    val_files: list[str]
    val_labels: list[int]
    skipped: int  # bad images left out (--skip-bad-images), training and validation
    decoded: Optional[DecodedImages]  # this rank's training shard decoded once (the image cache), or None

    @property
    def n_classes(self) -> int:
        return len(self.classes)


class ClassificationTask:
    """Image classification as the spec describes it, for this rank of the job."""

    def __init__(self, spec: ExperimentSpec, ranks: Optional[Ranks] = None, key: Optional[str] = None,
                 use_amp: bool = False) -> None:
        self.spec = spec
        self.ranks = ranks or Ranks()
        self.key = key
        self.use_amp = use_amp

    # -- numerics ------------------------------------------------------------------------------------------

    @property
    def amp_active(self) -> bool:
        """--use_amp takes effect on GPUs only."""
        return self.use_amp and bool(tf.config.list_physical_devices("GPU"))

    def configure_precision(self) -> None:
        """The global Keras dtype policy: mixed_float16 under --use_amp on a GPU (before any model is built)."""
        if not self.use_amp:
            return
        if not self.amp_active:
            log.warning("--use_amp ignored: no GPU visible, training in float32 on CPU")
            return
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        log.info("automatic mixed precision on: float16 compute, float32 variables, dynamic loss scaling")

    # -- inputs --------------------------------------------------------------------------------------------

    def load_data(self, classmap_path: Optional[str], skip_bad_images: bool, image_cache: str) -> TrainingData:
        """Scan the folders and check that every image decodes (each rank its shard); cache the training shard."""
        tr = self.spec.train
        train, val = folders.scan_train_val(tr.train_dataset_path, tr.val_dataset_path, classmap_path)
        log.info("checking that all %d images decode, each rank its shard (refusing bad ones unless "
                 "--skip-bad-images)", len(train.files) + len(val.files))
        check_started = time.monotonic()
        train_files, train_labels, skipped_train, decoded = self._check(train, skip_bad_images, image_cache, "train")
        log.info("training images checked%s in %.1f s", " and cached" if decoded is not None else "",
                 time.monotonic() - check_started)
        val_files, val_labels, skipped_val, _ = self._check(val, skip_bad_images, "off", "val")
        return TrainingData(tuple(train.classes), train_files, train_labels, val_files, val_labels,
                            skipped_train + skipped_val, decoded)

    def _check(self, data: folders.ImageFolder, skip_bad_images: bool, cache: str, name: str):
        # Each rank decodes its own shard and the ranks share what failed (one collective per set).
        ranks = self.ranks
        # the cache keeps large JPEGs at the scale the training pipeline decodes them at (data/jpeg_scale.py)
        scale = PipelineOptions.for_training(self.spec.model, self.spec.train, 1).jpeg_scale
        return exclude_bad_images_and_cache(
            data.files, data.labels, skip_bad_images=skip_bad_images, channels=self.spec.model.input_channels,
            rank=ranks.rank, size=ranks.size, cache=cache, n_workers=self.spec.train.n_workers, log=log.warning,
            info=log.info, gather=lambda failed: dist.allgather_list(ranks, failed, f"kestrel_bad_{name}"),
            scale=scale)

    def steps_per_epoch(self, data: TrainingData) -> int:
        return steps_per_epoch(len(data.train_files), self.spec.train.batch_size_per_gpu, self.ranks.size)

    def sample_weights(self, data: TrainingData) -> Optional[np.ndarray]:
        """Per-class loss weights (class_weighting "balanced"), else None."""
        if self.spec.train.class_weighting != "balanced":
            return None
        weights = class_weights(data.train_labels, data.n_classes)
        log.info("class weighting 'balanced': %s", ", ".join(f"{c}={w:.3f}" for c, w in zip(data.classes, weights)))
        return weights

    def build_inputs(self, data: TrainingData, first_epoch: int, skip: int = 0,
                     weights: Optional[np.ndarray] = None, record_dir: Optional[str] = None) -> tf.data.Dataset:
        """This rank's training batches from epoch `first_epoch` (0-based), `skip` batches into it, to the last.

        weights: per-class loss weights (sample_weights); record_dir: debug_ranks records of the paths fed.
        """
        options = PipelineOptions.for_training(self.spec.model, self.spec.train, self.spec.train.batch_size_per_gpu)
        ds = make_dataset(data.train_files, data.train_labels, data.n_classes,
                          replace(options, with_paths=bool(record_dir)), rank=self.ranks.rank,
                          size=self.ranks.size, initial_epoch=first_epoch, decoded=data.decoded)
        if skip:
            ds = ds.skip(skip)
        if record_dir:
            ds = debug_ranks.record_paths(ds, record_dir, self.ranks.rank, first_epoch, self.steps_per_epoch(data),
                                          skip)
        return _with_sample_weights(ds, weights) if weights is not None else ds

    def build_validation_inputs(self, data: TrainingData) -> tf.data.Dataset:
        """This rank's shard of the validation set, one pass (decoded once when it is small)."""
        options = PipelineOptions.for_evaluation(self.spec.model, self.spec.train, self.spec.train.batch_size_per_gpu)
        ds = make_dataset(data.val_files, data.val_labels, data.n_classes, options, rank=self.ranks.rank,
                          size=self.ranks.size)
        h, w, c = self.spec.model.input_shape
        if len(data.val_files) * h * w * c * 4 <= VAL_CACHE_BYTES:
            ds = ds.cache()  # decoded once; small validation sets only (memory)
        return ds

    def sample_images(self, data: TrainingData, n: int) -> Callable[[], tf.Tensor]:
        """The first n training images augmented as the model sees them (visualizer), fresh on each call."""
        from kestrel_trainer.storage import materialize

        materialize(data.train_files[:n])  # lazily staged data: this rank holds only its shard
        options = PipelineOptions.for_training(self.spec.model, self.spec.train, n)
        sample = make_dataset(data.train_files[:n], data.train_labels[:n], data.n_classes,
                              replace(options, n_epochs=1))
        return lambda: next(iter(sample))[0]

    # -- model ---------------------------------------------------------------------------------------------

    def build_optimizer(self, total_steps: int) -> tf.keras.optimizers.Optimizer:
        return make_optimizer(self.spec, total_steps=total_steps, n_ranks=self.ranks.size)

    def build_model(self, n_classes: int, total_steps: int, devices: list[str], plan: mp.DevicePlan,
                    resume: Optional[ckpt.Checkpoint] = None) -> tf.keras.Model:
        """The compiled model: from `resume` (weights and, when usable, optimizer state) or new (with the
        spec's pretrained weights); placed over `devices` when the plan splits it; regularized."""
        wrap = dist.optimizer_wrapper(self.ranks, loss_scaling=self.amp_active)
        if resume is not None:
            model, optimizer, state = self._restore(resume, n_classes, total_steps,
                                                    rebuild=wrap is not None or plan.split)
        else:
            model, optimizer, state = self._new_model(n_classes), self.build_optimizer(total_steps), None
        if plan.split:
            model = self._place(model, devices, plan)
        compile_model(model, self.spec, optimizer, wrap_optimizer=wrap)
        if state is not None:
            mp.restore_optimizer_state(model.optimizer, model.trainable_variables, state)
        self._regularize(model)
        return model

    def _restore(self, resume: ckpt.Checkpoint, n_classes: int, total_steps: int, rebuild: bool):
        """(model, optimizer, optimizer state to restore after compiling or None) from a checkpoint."""
        model = load_model(resume.path, self.key, compile=True)  # SpecSchedule is registered by its import
        optimizer, state = model.optimizer, None
        if optimizer is None:
            # The original's checkpoints (channels-first, its Keras 2.2 optimizer) and those written with
            # --format tao carry no state we can use: weights come from the file, the optimizer starts fresh
            # at the schedule's position.
            log.warning("%s: no optimizer state usable here; resuming its weights with a fresh %s optimizer "
                        "(momentum and moments restart)", resume.path, type(self.spec.train.optimizer).__name__)
            optimizer = self.build_optimizer(total_steps)
        elif rebuild:
            # A wrapped (Horovod, loss scaling) or re-placed model needs a new optimizer: carry the state over.
            state = optimizer.get_weights()
            optimizer = mp.rebuild_optimizer(optimizer)
        out = model.output_shape[-1]
        if out != n_classes:
            raise KestrelError(
                f"{resume.path}: has {out} classes but the dataset has {n_classes}; "
                "use a new results folder or --init_epoch 1 to start over", exit_code=2)
        return model, optimizer, state

    def _new_model(self, n_classes: int) -> tf.keras.Model:
        from kestrel_trainer.models.weights import build_with_pretrained

        model, report = build_with_pretrained(self.spec.model, n_classes, self.spec.train.pretrained_model_path or None,
                                              self.key)
        if report is not None:
            log.info("pretrained weights: %s", report.summary())
        return model

    def _place(self, model: tf.keras.Model, devices: list[str], plan: mp.DevicePlan) -> tf.keras.Model:
        """Model parallelism: the layers cut into the plan's fractions, one range per device."""
        batch = self.spec.train.batch_size_per_gpu
        model, rows = mp.place_model(model, devices, plan.fractions, batch,
                                     bytes_per_value=2 if self.amp_active else 4)
        if self.ranks.is_chief:
            log.info("model parallelism over %d devices per rank:\n%s", len(devices),
                     mp.format_table(rows, batch, plan.gpu_ids or None))
        return model

    def _regularize(self, model: tf.keras.Model) -> None:
        reg = self.spec.train.reg
        covered = add_regularization(model, reg)
        if covered:
            log.info("%s regularization (weight_decay %g) on %d kernels (%s)", reg.type, reg.weight_decay,
                     len(covered), ",".join(reg.scope))
