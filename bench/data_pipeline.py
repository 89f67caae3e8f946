"""Decoded + augmented images/s at 3x224x224: Kestrel's tf.data pipeline vs a loader like the original's.

Run by hand (not a test):  .venv/bin/python bench/data_pipeline.py [--images 1500] [--batch 64]

Data: real Fashion-MNIST images (Debian dataset-fashion-mnist), upscaled with PIL to 240..320 px sides,
tinted to RGB and written half as JPEG (quality 90), half as PNG, so decoding costs what photos cost.
Baseline, in the same run: the original's loading scheme, a tf.keras.utils.Sequence whose
__getitem__ opens each file with PIL, applies the original's random crop (PIL resize keeping aspect
to target/fraction, random window), a random flip and caffe preprocessing in NumPy, run by Keras'
OrderedEnqueuer with worker threads (use_multiprocessing=False), as classification_tf1 does.
Kestrel: make_dataset(training=True) with the same augmentations (random crop, flip, caffe).
Prints images/s for each and the ratio; colour augmentation is timed for Kestrel only (the original
used OpenCV + numba for it, which is not installed here, so a baseline for it would not be fair).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer_image"))

TARGET = 224


def make_files(work: str, n: int, seed: int = 0) -> list[str]:
    from kestrel_trainer.data.datasets import fashion_mnist as fm
    from PIL import Image

    marker = os.path.join(work, f"done-{n}")
    paths = [os.path.join(work, f"{i:05d}.{'jpg' if i % 2 == 0 else 'png'}") for i in range(n)]
    if os.path.exists(marker):
        return paths
    os.makedirs(work, exist_ok=True)
    images = fm.load()["train_images"]
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        w, h = (int(v) for v in rng.integers(240, 321, size=2))
        grey = np.asarray(Image.fromarray(images[i]).resize((w, h), Image.BICUBIC), np.float32)
        tint = rng.uniform(0.4, 1.0, size=3)
        rgb = np.clip(grey[..., None] * tint + rng.uniform(0, 60, size=3), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(path, quality=90) if path.endswith(".jpg") else Image.fromarray(rgb).save(path)
    open(marker, "w").close()
    return paths


def make_sequence(files: list[str], batch: int):
    """The original's loading: PIL decode + random crop in a Keras Sequence, NumPy preprocessing."""
    import tensorflow as tf
    from PIL import Image

    class OriginalStyleSequence(tf.keras.utils.Sequence):
        def __len__(self) -> int:
            return math.ceil(len(files) / batch)

        @staticmethod
        def _load(path: str) -> np.ndarray:
            img = Image.open(path).convert("RGB")
            width, height = img.size
            fraction = random.uniform(0.45, 1.0)
            ratio = max(TARGET / fraction / width, TARGET / fraction / height)
            img = img.resize((int(width * ratio), int(height * ratio)), resample=Image.BILINEAR)
            width, height = img.size
            left, top = random.randint(0, width - TARGET), random.randint(0, height - TARGET)
            x = np.asarray(img.crop((left, top, left + TARGET, top + TARGET)), dtype=np.float32)
            if random.random() < 0.5:
                x = x[:, ::-1]
            return x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)

        def __getitem__(self, idx: int):
            chunk = files[idx * batch:(idx + 1) * batch]
            return np.stack([self._load(p) for p in chunk]), np.zeros((len(chunk), 10), np.float32)

    return OriginalStyleSequence()


def time_baseline(files: list[str], batch: int, workers: int) -> float:
    import tensorflow as tf

    seq = make_sequence(files, batch)
    enqueuer = tf.keras.utils.OrderedEnqueuer(seq, use_multiprocessing=False, shuffle=True)
    enqueuer.start(workers=workers, max_queue_size=10)
    gen = enqueuer.get()
    next(gen)  # warm-up batch
    n, start = 0, time.perf_counter()
    for _ in range(len(seq) - 1):
        n += len(next(gen)[0])
    elapsed = time.perf_counter() - start
    enqueuer.stop()
    return n / elapsed


SPEC = """
model_config {{ arch: "resnet" n_layers: 18 input_image_size: "3,{t},{t}" }}
train_config {{
  train_dataset_path: "/unused" val_dataset_path: "/unused" batch_size_per_gpu: {batch} n_epochs: 1
  n_workers: {workers} enable_random_crop: true enable_color_augmentation: {color} preprocess_mode: "caffe"
  optimizer {{ sgd {{ lr: 0.01 }} }} lr_config {{ step {{ learning_rate: 0.01 step_size: 10 gamma: 0.1 }} }}
}}
"""


def time_kestrel(files: list[str], batch: int, color: bool, workers: int) -> float:
    """workers: the spec's n_workers (tf.data map parallelism); 0 overrides it with AUTOTUNE."""
    from kestrel_trainer.data.pipeline import make_dataset
    from kestrel_trainer.spec import parse_spec_text

    text = SPEC.format(t=TARGET, batch=batch, color=str(color).lower(), workers=max(workers, 1))
    spec = parse_spec_text(text, task="train")
    ds = make_dataset(files, [0] * len(files), 10, spec.model, spec.train, training=True, batch_size=batch,
                      n_workers=workers)
    it = iter(ds)
    next(it)  # warm-up batch (graph tracing, thread pools)
    n, start = 0, time.perf_counter()
    for images, _ in it:
        n += int(images.shape[0])
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--work", default="/tmp/kestrel-bench-data")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    args = parser.parse_args()

    files = make_files(args.work, args.images)
    cpus = os.cpu_count() or 1
    print(f"{len(files)} files (half JPEG, half PNG, 240..320 px) -> 3x{TARGET}x{TARGET}, batch {args.batch}, "
          f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f}")
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, fn in [
            (f"baseline Sequence, {cpus} threads", lambda: time_baseline(files, args.batch, cpus)),
            (f"baseline Sequence, {2 * cpus} threads", lambda: time_baseline(files, args.batch, 2 * cpus)),
            (f"kestrel tf.data, n_workers {cpus}", lambda: time_kestrel(files, args.batch, False, cpus)),
            ("kestrel tf.data, AUTOTUNE", lambda: time_kestrel(files, args.batch, False, 0)),
            ("kestrel tf.data + colour aug, AUTOTUNE", lambda: time_kestrel(files, args.batch, True, 0)),
        ]:
            rate = fn()
            best[name] = max(best.get(name, 0.0), rate)
            print(f"  {name:<40} {rate:8.1f} images/s")
    base = max(v for k, v in best.items() if k.startswith("baseline"))
    print("best of rounds:")
    for name, rate in best.items():
        print(f"  {name:<40} {rate:8.1f} images/s  ({rate / base:.2f}x the best baseline)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
