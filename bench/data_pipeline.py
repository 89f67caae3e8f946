"""Decoded + augmented images/s at 3x224x224: Kestrel's tf.data pipeline vs a loader like the original's.

Run by hand (not a test):  .venv/bin/python bench/data_pipeline.py [--images 1500] [--batch 64]

Data: real Fashion-MNIST images (Debian dataset-fashion-mnist), upscaled with PIL to 240..320 px sides,
tinted to RGB, each written as JPEG (quality 90) and as PNG; the two formats are timed separately
(JPEG is what photo datasets use; PNG decoding is zlib-bound and costs the same in both loaders).
Baseline, in the same run: the original's loading scheme, a tf.keras.utils.Sequence whose
__getitem__ opens each file with PIL, applies the original's random crop (PIL resize keeping aspect
to target/fraction, random window), a random flip and caffe preprocessing in NumPy, run by Keras'
OrderedEnqueuer with worker threads (use_multiprocessing=False), as classification_tf1 does.
Kestrel: make_dataset(PipelineOptions.for_training(...)) with the same augmentations (random crop, flip, caffe).
Kestrel is timed decoding every epoch (its path when the decoded images exceed the cache budget) and
from its in-memory cache of decoded images (training's default when they fit: the files are decoded
once per run, timed separately as "cache fill", and the average over runs of 1, 10 and 80 epochs
including that fill is printed). Prints images/s for each and the ratio; colour augmentation is timed
against the original's OpenCV colour augmentation added to the lean baseline, when OpenCV is importable
(it is not a Kestrel dependency; `pip install opencv-python-headless==4.10.0.84` works with the NumPy
1.26 that TensorFlow 2.15 needs).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import random
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer_image"))

TARGET = 224


def make_files(work: str, n: int, seed: int = 0) -> list[str]:
    from PIL import Image

    from kestrel_trainer.data.datasets import fashion_mnist as fm

    marker = os.path.join(work, f"done-{n}")
    paths = [os.path.join(work, f"{i:05d}.{ext}") for i in range(n) for ext in ("jpg", "png")]
    if os.path.exists(marker):
        return paths
    os.makedirs(work, exist_ok=True)
    images = fm.load()["train_images"]
    rng = np.random.default_rng(seed)
    for k, path in enumerate(paths):
        i = k // 2
        if k % 2:
            Image.open(paths[k - 1]).save(path)  # the same picture as PNG
            continue
        w, h = (int(v) for v in rng.integers(240, 321, size=2))
        grey = np.asarray(Image.fromarray(images[i]).resize((w, h), Image.BICUBIC), np.float32)
        tint = rng.uniform(0.4, 1.0, size=3)
        rgb = np.clip(grey[..., None] * tint + rng.uniform(0, 60, size=3), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(path, quality=90) if path.endswith(".jpg") else Image.fromarray(rgb).save(path)
    open(marker, "w").close()
    return paths


def cpu_seconds() -> float:
    """CPU time of this process (all threads): a steadier cost measure than wall time on a busy machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pil_random_crop(path: str):
    """The original's PIL random crop: resize keeping aspect so TARGET/fraction fits, random TARGET window."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    width, height = img.size
    fraction = random.uniform(0.45, 1.0)
    ratio = max(TARGET / fraction / width, TARGET / fraction / height)
    img = img.resize((int(width * ratio), int(height * ratio)), resample=Image.BILINEAR)
    width, height = img.size
    left, top = random.randint(0, width - TARGET), random.randint(0, height - TARGET)
    return img.crop((left, top, left + TARGET, top + TARGET))


def caffe(x: np.ndarray) -> np.ndarray:
    """RGB -> BGR minus the caffe mean, as the original's NumPy preprocessing."""
    return x[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)


def opencv_color(img) -> np.ndarray:
    """The original's colour augmentation (its utils/helper.py, minus numba, which falls back to Python
    around cv2 calls anyway): in [0, 1], OpenCV HSV round trips for a hue rotation ~ U(-25, 25) degrees
    and a saturation shift ~ U(-0.2, 0.2), contrast ~ 1 + U(-0.1, 0.1) about 0.5, back to uint8."""
    import cv2

    x = np.asarray(img, dtype=np.float32) / 255.0
    hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)  # the original passes RGB as BGR; the hue sign does not matter
    hsv[:, :, 0] = np.mod(hsv[:, :, 0] + random.uniform(-25.0, 25.0), 360.0)
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    hsv = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] + random.uniform(-0.2, 0.2), 0.0, 1.0)
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    x = np.clip((x - 0.5) * (1.0 + random.uniform(-0.1, 0.1)) + 0.5, 0.0, 1.0)
    return (x * 255.0).astype(np.uint8)


def have_opencv() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def make_sequence(files: list[str], batch: int, color: bool = False):
    """The original's loading: PIL decode + random crop in a Keras Sequence, NumPy preprocessing;
    color: plus its OpenCV colour augmentation."""
    import tensorflow as tf

    class OriginalStyleSequence(tf.keras.utils.Sequence):
        def __len__(self) -> int:
            return math.ceil(len(files) / batch)

        @staticmethod
        def _load(path: str) -> np.ndarray:
            crop = pil_random_crop(path)
            x = np.asarray(opencv_color(crop) if color else crop, dtype=np.float32)
            if random.random() < 0.5:
                x = x[:, ::-1]
            return caffe(x)

        def __getitem__(self, idx: int):
            chunk = files[idx * batch:(idx + 1) * batch]
            return np.stack([self._load(p) for p in chunk]), np.zeros((len(chunk), 10), np.float32)

    return OriginalStyleSequence()


def make_directory_iterator(files: list[str], batch: int):
    """The original's actual loader: Keras ImageDataGenerator.flow_from_directory (a Sequence) with
    keras' load_img replaced by a PIL random-crop loader, per-image flip and caffe preprocessing."""
    import tensorflow as tf
    from keras.src.utils import image_utils

    def load_and_crop_img(path, grayscale=False, color_mode="rgb", target_size=None, interpolation="nearest",
                          keep_aspect_ratio=False):
        return pil_random_crop(path)

    image_utils.load_img = load_and_crop_img
    folder = os.path.join(os.path.dirname(files[0]), f"tree-{os.path.splitext(files[0])[1][1:]}-{len(files)}")
    if not os.path.isdir(folder):
        os.makedirs(os.path.join(folder, "c0"))
        for f in files:
            os.symlink(f, os.path.join(folder, "c0", os.path.basename(f)))

    gen = tf.keras.preprocessing.image.ImageDataGenerator(horizontal_flip=True, preprocessing_function=caffe)
    return gen.flow_from_directory(folder, target_size=(TARGET, TARGET), batch_size=batch, shuffle=True,
                                   interpolation="bilinear:random")


def time_baseline(files: list[str], batch: int, workers: int, faithful: bool = False, color: bool = False
                  ) -> tuple[float, float]:
    """(images/s, images per CPU-second). faithful: the ImageDataGenerator loader, else the lean Sequence;
    color: the lean Sequence with the original's OpenCV colour augmentation."""
    import tensorflow as tf

    seq = make_directory_iterator(files, batch) if faithful else make_sequence(files, batch, color)
    enqueuer = tf.keras.utils.OrderedEnqueuer(seq, use_multiprocessing=False, shuffle=True)
    enqueuer.start(workers=workers, max_queue_size=10)
    gen = enqueuer.get()
    next(gen)  # warm-up batch
    n, start, cpu = 0, time.perf_counter(), cpu_seconds()
    for _ in range(len(seq) - 1):
        n += len(next(gen)[0])
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    enqueuer.stop()
    return n / elapsed, n / cpu


SPEC = """
model_config {{ arch: "resnet" n_layers: 18 input_image_size: "3,{t},{t}" }}
train_config {{
  train_dataset_path: "/unused" val_dataset_path: "/unused" batch_size_per_gpu: {batch} n_epochs: 1
  n_workers: {workers} enable_random_crop: true enable_color_augmentation: {color} preprocess_mode: "caffe"
  optimizer {{ sgd {{ lr: 0.01 }} }} lr_config {{ step {{ learning_rate: 0.01 step_size: 10 gamma: 0.1 }} }}
}}
"""


def time_cache_fill(files: list[str]) -> tuple[float, float]:
    """(images/s, images per CPU-second) of decoding every file once into the in-memory image cache."""
    from kestrel_trainer.data.decoded import decode_images

    start, cpu = time.perf_counter(), cpu_seconds()
    decoded = decode_images(files, 3)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    CACHE[tuple(files)] = decoded
    return len(files) / elapsed, len(files) / cpu


CACHE: dict = {}


def time_kestrel(files: list[str], batch: int, color: bool, workers: int, cached: bool = False
                 ) -> tuple[float, float]:
    """workers: the spec's n_workers (tf.data map parallelism); 0 overrides it with AUTOTUNE.
    cached: an epoch from the in-memory decoded-image cache (training's default when it fits)."""
    from dataclasses import replace

    from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset
    from kestrel_trainer.spec import parse_spec_text

    text = SPEC.format(t=TARGET, batch=batch, color=str(color).lower(), workers=max(workers, 1))
    spec = parse_spec_text(text, task="train")
    if cached and tuple(files) not in CACHE:
        time_cache_fill(files)
    options = replace(PipelineOptions.for_training(spec.model, spec.train, batch), n_workers=workers)
    ds = make_dataset(files, [0] * len(files), 10, options, decoded=CACHE[tuple(files)] if cached else None)
    it = iter(ds)
    next(it)  # warm-up batch (graph tracing, thread pools)
    n, start, cpu = 0, time.perf_counter(), cpu_seconds()
    for images, _ in it:
        n += int(images.shape[0])
    return n / (time.perf_counter() - start), n / (cpu_seconds() - cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--work", default="/tmp/kestrel-bench-data")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    args = parser.parse_args()

    all_files = make_files(args.work, args.images)
    cpus = os.cpu_count() or 1
    print(f"{args.images} images per format, 240..320 px -> 3x{TARGET}x{TARGET}, batch {args.batch}, "
          f"{cpus} CPUs, load average {os.getloadavg()[0]:.1f}")
    for fmt in ("jpg", "png"):
        files = [f for f in all_files if f.endswith(fmt)]
        runs = [
            (f"baseline Sequence, {cpus} threads", functools.partial(time_baseline, files, args.batch, cpus)),
            (f"baseline Sequence, {2 * cpus} threads", functools.partial(time_baseline, files, args.batch, 2 * cpus)),
            (f"original ImageDataGenerator, {2 * cpus} thr",
             functools.partial(time_baseline, files, args.batch, 2 * cpus, faithful=True)),
            (f"kestrel tf.data, n_workers {cpus}", functools.partial(time_kestrel, files, args.batch, False, cpus)),
            ("kestrel tf.data, AUTOTUNE", functools.partial(time_kestrel, files, args.batch, False, 0)),
            ("kestrel tf.data + colour aug, AUTOTUNE", functools.partial(time_kestrel, files, args.batch, True, 0)),
            ("kestrel cached epoch, AUTOTUNE", functools.partial(time_kestrel, files, args.batch, False, 0, True)),
            ("kestrel cached epoch + colour aug", functools.partial(time_kestrel, files, args.batch, True, 0, True)),
            ("kestrel cache fill (decode once)", functools.partial(time_cache_fill, files)),
        ]
        if have_opencv():
            runs.insert(3, (f"colour baseline (OpenCV), {2 * cpus} threads",
                            functools.partial(time_baseline, files, args.batch, 2 * cpus, color=True)))
        wall: dict[str, float] = {}
        per_cpu: dict[str, float] = {}
        print(f"{fmt.upper()}:")
        for _ in range(args.rounds):
            for name, fn in runs:
                rate, cpu_rate = fn()
                wall[name] = max(wall.get(name, 0.0), rate)
                per_cpu[name] = max(per_cpu.get(name, 0.0), cpu_rate)
                print(f"  {name:<40} {rate:8.1f} images/s {cpu_rate:8.1f} images/CPU-s", flush=True)
        base_wall = max(v for k, v in wall.items() if k.startswith("baseline"))
        base_cpu = max(v for k, v in per_cpu.items() if k.startswith("baseline"))
        print(f"{fmt.upper()} best of {args.rounds} round(s), ratio to the best lean-Sequence baseline "
              "(wall, per CPU-second):")
        for name in wall:
            print(f"  {name:<40} {wall[name]:8.1f} images/s ({wall[name] / base_wall:.2f}x)"
                  f" {per_cpu[name]:8.1f} images/CPU-s ({per_cpu[name] / base_cpu:.2f}x)")
        if have_opencv():
            colour = wall[f"colour baseline (OpenCV), {2 * cpus} threads"]
            for name in ("kestrel tf.data + colour aug, AUTOTUNE", "kestrel cached epoch + colour aug"):
                print(f"  {name:<40} vs the OpenCV colour baseline: {wall[name] / colour:.2f}x")
        else:
            print("  (no colour baseline: pip install opencv-python-headless==4.10.0.84 to time the original's "
                  "OpenCV colour augmentation)")
        fill, epoch = wall["kestrel cache fill (decode once)"], wall["kestrel cached epoch, AUTOTUNE"]
        for n_epochs in (1, 10, 80):  # the fill is paid once per run: what a run of n epochs averages
            rate = n_epochs / (1 / fill + n_epochs / epoch)
            name = f"kestrel cached, {n_epochs}-epoch run incl. fill"
            print(f"  {name:<40} {rate:8.1f} images/s ({rate / base_wall:.2f}x)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
