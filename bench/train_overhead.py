"""Throughput of Kestrel's training loop vs a bare `tf.keras` `model.fit`, same model and input, one run.

Ours is `run_training` itself (checkpoint every epoch, training.csv, status.json, TensorBoard, curves,
progress lines, L2 regularization); the baseline is `model.fit` of the same model on the same tf.data
pipeline with the same validation set and nothing else. Steady-state epochs only (the first pays for
tracing). Run by hand:

    .venv/bin/python bench/train_overhead.py [--per-class 1500] [--epochs 3] [--arch resnet --layers 18]

Prints images/s of each and the ratio ours/baseline (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import tensorflow as tf

from kestrel_trainer.data import folders
from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset
from kestrel_trainer.data.sharding import steps_per_epoch
from kestrel_trainer.models.registry import create_model
from kestrel_trainer.spec import parse_spec_text
from kestrel_trainer.train.loop import TrainOptions, run_training
from kestrel_trainer.train.task import compile_model, make_optimizer

SPEC = """
model_config {{ arch: "{arch}" n_layers: {layers} input_image_size: "1,32,32" use_batch_norm: true }}
train_config {{
  train_dataset_path: "{data}/train" val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ momentum: 0.9 nesterov: true }} }}
  lr_config {{ cosine {{ learning_rate: 0.05 soft_start: 0.05 }} }}
  reg_config {{ type: "None" }}
  batch_size_per_gpu: 128 n_epochs: {epochs} n_workers: 2 preprocess_mode: "torch" label_smoothing: 0.1
}}
"""


class EpochTimer(tf.keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._t = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--arch", default="resnet")
    ap.add_argument("--layers", type=int, default=18)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kestrel-bench-")
    data = os.path.join(work, "fm")
    subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "dataset", "import", "fashion-mnist",
                    "--out", data, "--per-class", str(args.per_class)], check=True, capture_output=True)
    spec = parse_spec_text(SPEC.format(arch=args.arch, layers=args.layers, data=data, epochs=args.epochs),
                           task="train")
    n_train = len(folders.scan(spec.train.train_dataset_path).files)

    # baseline: bare model.fit, same model, optimizer, loss, input pipeline and validation set
    train = folders.scan(spec.train.train_dataset_path)
    val = folders.scan(spec.train.val_dataset_path, train.classmap)
    tf.keras.utils.set_random_seed(spec.train.random_seed)
    model = create_model(spec.model, train.n_classes)
    spe = steps_per_epoch(n_train, 128)
    compile_model(model, spec, make_optimizer(spec, spe * args.epochs))
    ds = make_dataset(train.files, train.labels, train.n_classes,
                      PipelineOptions.for_training(spec.model, spec.train, 128))
    vds = make_dataset(val.files, val.labels, val.n_classes,
                       PipelineOptions.for_evaluation(spec.model, spec.train, 128)).cache()
    base = EpochTimer()
    model.fit(ds, epochs=args.epochs, steps_per_epoch=spe, validation_data=vds, callbacks=[base], verbose=0)

    ours = EpochTimer()
    run_training(spec, TrainOptions(results_dir=os.path.join(work, "results"), key="bench-key", verbose=False,
                                    extra_callbacks=[ours]))

    def rate(seconds: list[float]) -> float:
        steady = seconds[1:] or seconds
        return n_train * len(steady) / sum(steady)

    b, o = rate(base.seconds), rate(ours.seconds)
    print(f"model {spec.model.name} 1x32x32, {n_train} train images, {args.epochs} epochs (first excluded)")
    print(f"baseline model.fit : {b:8.1f} img/s  epochs {[round(s, 2) for s in base.seconds]}")
    print(f"kestrel train loop : {o:8.1f} img/s  epochs {[round(s, 2) for s in ours.seconds]}")
    print(f"ratio ours/baseline: {o / b:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
