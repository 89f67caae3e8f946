"""`kestrel train --dry-run`: say what a training run would build and do, without training or writing.

For reviewing a spec (or a GitOps change) before spending GPU hours: the resolved model and its size,
the data it would read (when the folders are reachable here), the steps and learning rate it would
use, and whether it would resume from a checkpoint already in the results folder.
"""

from __future__ import annotations

import os
from typing import Optional

from kestrel_trainer.data import folders
from kestrel_trainer.data.sharding import steps_per_epoch
from kestrel_trainer.errors import DataError
from kestrel_trainer.spec.render import summarize
from kestrel_trainer.spec.types import ExperimentSpec
from kestrel_trainer.train import checkpoints as ckpt
from kestrel_trainer.train.schedules import lr_at

ASSUMED_CLASSES = 1000  # when the training folder is not reachable from here


def describe_run(spec: ExperimentSpec, results_dir: str, init_epoch: Optional[int], ranks: int = 1,
                 classmap_path: Optional[str] = None) -> list[str]:
    """Lines describing the run; builds the model (TensorFlow) but reads no image and writes nothing."""
    from kestrel_trainer.models.registry import create_model
    from kestrel_trainer.models.summary import count_macs, param_counts

    tr = spec.train
    lines = [f"spec: {summarize(spec)}"]
    n_classes, n_train = ASSUMED_CLASSES, None
    try:
        train, val = folders.scan_train_val(tr.train_dataset_path, tr.val_dataset_path, classmap_path)
        n_classes, n_train = train.n_classes, len(train.files)
        lines.append(f"data: {n_train} training and {len(val.files)} validation images of {n_classes} classes "
                     f"({tr.train_dataset_path}, {tr.val_dataset_path})")
    except DataError as err:
        lines.append(f"data: not readable here ({err.message}); assuming {ASSUMED_CLASSES} classes")
    model = create_model(spec.model, n_classes)
    total, trainable = param_counts(model)
    lines.append(f"model: {spec.model.name}, input {spec.model.input_channels}x{spec.model.input_height}x"
                 f"{spec.model.input_width}, {total:,} parameters ({trainable:,} trainable), "
                 f"{2 * count_macs(model) / 1e9:.3f} GFLOPs per image, {n_classes} outputs")
    if n_train is not None and tr.lr is not None:
        spe = steps_per_epoch(n_train, tr.batch_size_per_gpu, ranks)
        total_steps = spe * tr.n_epochs
        rates = ", ".join(f"{lr_at(tr.lr, int(p * total_steps), total_steps, ranks):.4g}" for p in (0, 0.25, 0.5,
                                                                                                   0.75, 1.0))
        lines.append(f"schedule: {tr.n_epochs} epochs x {spe} steps of {tr.batch_size_per_gpu} per rank on {ranks} "
                     f"rank(s); {tr.lr.name} learning rate at 0/25/50/75/100%: {rates}")
    resume = ckpt.choose_resume(os.path.join(results_dir, "weights"), spec.model.arch, init_epoch,
                                tr.pretrained_model_path or "")
    if resume is None:
        lines.append(f"results: {results_dir}: a new run (no checkpoint to resume from)")
    else:
        lines.append(f"results: {results_dir}: would resume from {resume.path} ({resume.epochs_done} epochs done)")
    return lines
