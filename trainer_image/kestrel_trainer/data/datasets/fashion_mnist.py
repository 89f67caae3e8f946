"""Import the real Fashion-MNIST (Debian package dataset-fashion-mnist) as image folders.

Layout written under OUT:
    train/<class>/train_NNNNN.png   official training images not picked for val (54,000)
    val/<class>/train_NNNNN.png     a seeded, class-balanced 10% of the official training set (6,000)
    test/<class>/test_NNNNN.png     the official test set (10,000)
    classmap.json                   the official label order (T-shirt_top=0 ... Ankle_boot=9)
NNNNN is the image's index in its official IDX file, so every PNG can be traced back. The PNGs are
8-bit greyscale and round-trip pixel-exact. The package ships the IDX files gzip-compressed; plain
files are accepted too. Splits are written to a temporary folder and renamed into place, so an
interrupted import never leaves a half-written split, and existing splits are never overwritten.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np

from kestrel_trainer.data.folders import write_classmap
from kestrel_trainer.errors import DataError
from kestrel_trainer.progress import progress

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot",
)
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
INSTALL_HINT = "apt-get install dataset-fashion-mnist"


@dataclass(frozen=True)
class ImportResult:
    out: str
    counts: dict[str, int]  # images written per split
    seconds: float


def _find(source: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(source, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"Fashion-MNIST file {stem}(.gz) not found in {source}: install the Debian package "
                    f"with `{INSTALL_HINT}`")


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzip'd): big-endian header, magic 0x08 = unsigned bytes."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: truncated IDX file ({body.size} bytes for shape {dims})")
    return body.reshape(dims)


def load(source: str = DEFAULT_SOURCE) -> dict[str, np.ndarray]:
    """The four official arrays: train_images (60000,28,28), train_labels, test_images, test_labels."""
    if not os.path.isdir(source):
        raise DataError(f"Fashion-MNIST not found ({source} does not exist): install the Debian package "
                        f"with `{INSTALL_HINT}`")
    arrays = {key: read_idx(_find(source, stem)) for key, stem in _FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"{source}: {split} images and labels differ in length")
    return arrays


def split_indices(labels: np.ndarray, seed: int, val_fraction: float = VAL_FRACTION
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: per class, a seeded random val_fraction goes to val; both sorted."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(len(members) * val_fraction))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def cap_per_class(indices: np.ndarray, labels: np.ndarray, per_class: Optional[int]) -> np.ndarray:
    """The first `per_class` indices of each class (all when None), keeping index order."""
    if per_class is None:
        return indices
    kept = [indices[labels[indices] == c][:per_class] for c in range(len(CLASS_NAMES))]
    return np.sort(np.concatenate(kept))


def _write_pngs(jobs: Sequence[tuple[str, np.ndarray]], threads: int) -> None:
    from PIL import Image

    def write(job: tuple[str, np.ndarray]) -> None:
        path, pixels = job
        # compress_level 1: 28x28 files are only ~4% larger than at the default level, and encode faster.
        Image.fromarray(pixels, mode="L").save(path, format="PNG", compress_level=1)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in progress(pool.map(write, jobs), total=len(jobs), desc="import", unit="img"):
            pass


def import_fashion_mnist(
    out: str,
    *,
    per_class: Optional[int] = None,
    seed: int = 0,
    source: str = DEFAULT_SOURCE,
    threads: Optional[int] = None,
) -> ImportResult:
    """Write train/val/test folders under `out` (see the module docstring); refuses to overwrite."""
    import time

    if per_class is not None and per_class < 1:
        raise DataError(f"--per-class must be >= 1, got {per_class}")
    start = time.perf_counter()
    arrays = load(source)
    out = os.path.abspath(out)
    for split in SPLITS:
        target = os.path.join(out, split)
        if os.path.exists(target):
            raise DataError(f"{target} already exists: choose another --out or remove it first")
    train_idx, val_idx = split_indices(arrays["train_labels"], seed)
    selections = {
        "train": ("train", cap_per_class(train_idx, arrays["train_labels"], per_class)),
        "val": ("train", cap_per_class(val_idx, arrays["train_labels"], per_class)),
        "test": ("test", cap_per_class(np.arange(len(arrays["test_labels"])), arrays["test_labels"], per_class)),
    }
    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".import-", dir=out)
    try:
        jobs = []
        for split, (source_set, indices) in selections.items():
            images, labels = arrays[f"{source_set}_images"], arrays[f"{source_set}_labels"]
            for name in CLASS_NAMES:
                os.makedirs(os.path.join(staging, split, name))
            jobs.extend(
                (os.path.join(staging, split, CLASS_NAMES[labels[i]], f"{source_set}_{i:05d}.png"), images[i])
                for i in indices
            )
        _write_pngs(jobs, threads or min(8, (os.cpu_count() or 1) * 2))
        for split in SPLITS:
            os.rename(os.path.join(staging, split), os.path.join(out, split))
        write_classmap(os.path.join(out, "classmap.json"), CLASS_NAMES)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    counts = {split: len(indices) for split, (_, indices) in selections.items()}
    return ImportResult(out=out, counts=counts, seconds=time.perf_counter() - start)
