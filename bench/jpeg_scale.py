"""Large JPEGs decoded at reduced scale (data/jpeg_scale.py) vs at full size: images/s, cache memory, output change.

Run by hand (not a test):  .venv/bin/python bench/jpeg_scale.py [--images 200] [--size 3000x2000] [--rounds 2]
                                                                [--photo PATH ...]

Data: N JPEGs (quality 90) of the given size made from real pixels upscaled (bicubic): mosaics of real
Fashion-MNIST images (Debian dataset-fashion-mnist), each tile one image upscaled to 84-336 px and tinted;
with --photo (e.g. scikit-learn's sample photos, if installed), every other image is a random crop of one of
those photos upscaled to the size instead. Upscaled pictures are smoother than camera photos of the same size,
so their files are smaller and decode faster than a phone's: the ratios matter more than the absolute figures.

Timed, each in alternating rounds (best of each kept), reduction on vs off (PipelineOptions.reduced_jpeg):
1. decoding only (a tf.data map, AUTOTUNE): tf.io.decode_jpeg at full size vs at the rule's ratio for the spec;
2. the training pipeline decoding every epoch (make_dataset: random crop to 224, flip, caffe; the path when the
   image cache does not fit);
3. the image-cache fill (decode_images: the one decode per run) and its memory, and an epoch read from that
   cache; at full size only for the first --full-cache images (the full cache of all of them would need
   images x H x W x 3 bytes: computed from the headers instead).
Then the accuracy proxy: the pipeline's output tensors with and without the reduction (same seeded draws):
mean abs and max difference, random crop (training) and center crop (evaluation), in levels of 255; for
scale, the difference between the spec's two resampling methods (bilinear vs bicubic) at full size.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer_image"))

TARGET = 224


class Timer:
    """Wall-clock and CPU seconds (all threads) of a block: CPU time per image is the steadier figure on a
    machine shared with other jobs."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, self._cpu() - self.cpu

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def rates(self, n: int) -> tuple[float, float]:
        """(images/s, CPU milliseconds per image)"""
        return n / self.wall, 1000.0 * self.cpu / n


def make_files(work: str, n: int, height: int, width: int, photos: list[str], seed: int = 0) -> list[str]:
    from PIL import Image

    from kestrel_trainer.data.datasets import fashion_mnist as fm

    marker = os.path.join(work, f"done-{n}-{height}x{width}-{len(photos)}")
    paths = [os.path.join(work, f"{i:05d}.jpg") for i in range(n)]
    if os.path.exists(marker):
        return paths
    os.makedirs(work, exist_ok=True)
    images = fm.load()["train_images"]
    pictures = [Image.open(p).convert("RGB") for p in photos]
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        if pictures and i % 2:
            pic = pictures[i // 2 % len(pictures)]
            w = int(pic.width * rng.uniform(0.6, 1.0))
            h = min(pic.height, int(w * height / width))
            x, y = int(rng.integers(0, pic.width - w + 1)), int(rng.integers(0, pic.height - h + 1))
            pic.crop((x, y, x + w, y + h)).resize((width, height), Image.BICUBIC).save(path, quality=90)
            continue
        canvas = np.zeros((height, width, 3), np.float32)
        y = 0
        while y < height:
            tile = int(rng.integers(84, 337))
            x = 0
            while x < width:
                item = Image.fromarray(images[rng.integers(len(images))])
                grey = np.asarray(item.resize((tile, tile), Image.BICUBIC), np.float32)
                part = grey[..., None] * rng.uniform(0.3, 1.0, size=3) + rng.uniform(0, 80, size=3)
                canvas[y:y + tile, x:x + tile] = part[:height - y, :width - x]
                x += tile
            y += tile
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(path, quality=90)
    open(marker, "w").close()
    return paths


def options(reduced: bool, training: bool = True):
    from dataclasses import replace

    from kestrel_trainer.data.pipeline import PipelineOptions
    from kestrel_trainer.spec import parse_spec_text

    spec = parse_spec_text(f"""
model_config {{ arch: "resnet" n_layers: 18 input_image_size: "3,{TARGET},{TARGET}" }}
train_config {{
  train_dataset_path: "/unused" val_dataset_path: "/unused" batch_size_per_gpu: 16 n_epochs: 1 n_workers: 2
  enable_random_crop: true enable_center_crop: true preprocess_mode: "caffe"
  optimizer {{ sgd {{ lr: 0.01 }} }} lr_config {{ step {{ learning_rate: 0.01 step_size: 10 gamma: 0.1 }} }}
}}""", task="train")
    o = (PipelineOptions.for_training(spec.model, spec.train, 16) if training
         else PipelineOptions.for_evaluation(spec.model, spec.train, 16, True))
    return replace(o, reduced_jpeg=reduced, n_workers=0)  # AUTOTUNE


def time_decode(files: list[str], reduced: bool) -> tuple[float, float]:
    """Decoding only (what the cache fill and the per-epoch path pay per image): Timer.rates."""
    import tensorflow as tf

    from kestrel_trainer.data import transforms as T

    scale = options(reduced).jpeg_scale

    def decode(path):
        raw = tf.io.read_file(path)
        header = tf.io.extract_jpeg_shape(raw)
        return tf.shape(T.decode_jpeg_scaled(raw, T.jpeg_ratio(header[0], header[1], scale)))

    ds = tf.data.Dataset.from_tensor_slices(files).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    with Timer() as t:
        for _ in ds:
            pass
    return t.rates(len(files))


def time_epoch(files: list[str], reduced: bool, decoded=None) -> tuple[float, float]:
    """A training epoch (random crop 224, flip, caffe), decoding every file or from `decoded`: Timer.rates."""
    from kestrel_trainer.data.pipeline import make_dataset

    it = iter(make_dataset(files, [0] * len(files), 10, options(reduced), decoded=decoded))
    next(it)  # warm-up batch
    n = 0
    with Timer() as t:
        for images, _ in it:
            n += int(images.shape[0])
    return t.rates(n)


def time_fill(files: list[str], reduced: bool):
    """(Timer.rates of the image-cache fill, its bytes, Timer.rates of a training epoch read from it)."""
    from kestrel_trainer.data.decoded import decode_images

    with Timer() as t:
        decoded = decode_images(files, 3, scale=options(reduced).jpeg_scale)
    return t.rates(len(files)), decoded.nbytes, time_epoch(files, reduced, decoded)


def outputs(files: list[str], reduced: bool, training: bool, method: str = "bilinear") -> np.ndarray:
    from dataclasses import replace

    from kestrel_trainer.data.pipeline import make_dataset

    ds = make_dataset(files, [0] * len(files), 10, replace(options(reduced, training), resize_method=method))
    return np.concatenate([x.numpy() for x, _ in ds])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", default="3000x2000", help="WIDTHxHEIGHT")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--full-cache", type=int, default=40, help="images filled into a full-size cache")
    parser.add_argument("--photo", action="append", default=[], help="a real photo to crop and upscale")
    parser.add_argument("--work", default="/tmp/kestrel-bench-jpeg")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    files = make_files(args.work, args.images, height, width, args.photo)
    mb = sum(os.path.getsize(f) for f in files) / len(files) / 2**20
    scale = options(True).jpeg_scale
    ratio = scale.ratio(height, width)
    print(f"{len(files)} JPEGs of {width}x{height} ({mb:.2f} MiB each on average), -> 3x{TARGET}x{TARGET}; "
          f"random crop: decoded at 1/{ratio} (center crop: 1/{options(True, False).jpeg_scale.ratio(height, width)})"
          f"; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    best: dict[str, tuple[float, float]] = {}  # (highest images/s, lowest CPU ms per image) over the rounds

    def note(k: int, name: str, reduced: bool, rates: tuple[float, float]) -> None:
        key = f"{name}, {'reduced' if reduced else 'full size'}"
        old = best.get(key, (0.0, float("inf")))
        best[key] = (max(old[0], rates[0]), min(old[1], rates[1]))
        print(f"  round {k + 1}: {key:45s} {rates[0]:8.1f} images/s {rates[1]:8.2f} CPU ms/image", flush=True)

    for k in range(args.rounds):
        for reduced in (False, True):
            note(k, "decode only", reduced, time_decode(files, reduced))
        for reduced in (False, True):
            note(k, "pipeline, decoding every epoch", reduced, time_epoch(files, reduced))
        part = files[:args.full_cache]
        for reduced in (False, True):
            fill, nbytes, epoch = time_fill(part, reduced)
            note(k, "cache fill", reduced, fill)
            note(k, "epoch from the image cache", reduced, epoch)
            print(f"  round {k + 1}: image cache of {len(part)}: {nbytes / 2**20:.0f} MiB", flush=True)
    print(f"best of {args.rounds} rounds (load average now {os.getloadavg()[0]:.1f}):")
    for name in ("decode only", "pipeline, decoding every epoch", "cache fill", "epoch from the image cache"):
        (full, full_cpu), (red, red_cpu) = best[f"{name}, full size"], best[f"{name}, reduced"]
        print(f"  {name:32s} full size {full:7.1f}  reduced {red:7.1f} images/s ({red / full:5.2f}x);  "
              f"CPU ms/image {full_cpu:7.2f} -> {red_cpu:6.2f} ({full_cpu / red_cpu:5.2f}x less)")
    from kestrel_trainer.data.decoded import decode_images

    nbytes = decode_images(files, 3, scale=scale).nbytes
    full_bytes = len(files) * height * width * 3
    print(f"  image cache for all {len(files)} images: full size {full_bytes / 2**20:.0f} MiB (H x W x 3 each), "
          f"reduced {nbytes / 2**20:.0f} MiB ({full_bytes / nbytes:.1f}x less)")
    for training, name in ((True, "random crop (training)"), (False, "center crop (evaluation)")):
        full = outputs(files, False, training)
        for label, other in (("reduced vs full size", outputs(files, True, training)),
                             ("bicubic vs bilinear, full size", outputs(files, False, training, "bicubic"))):
            diff = np.abs(other - full)
            print(f"  output difference, {name}, {label}: mean abs {diff.mean():.2f}, max {diff.max():.1f} levels "
                  f"of 255; per image mean abs up to {diff.mean(axis=(1, 2, 3)).max():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
