"""Debugging aid for data-parallel runs (tests and e2e compare the ranks with it).

When KESTREL_DEBUG_RANKS_DIR is set, each rank writes into that folder its process id (rank<r>.pid),
the path of every training image it feeds to the model (rank<r>_epoch<e>.txt, one line per image, in
order) and, at the end, its own copy of the weights (rank<r>_final.h5). Outputs proper stay chief-only.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import tensorflow as tf

DEBUG_DIR_ENV = "KESTREL_DEBUG_RANKS_DIR"


def debug_dir() -> Optional[str]:
    """The folder the ranks write their records into, or None (the normal case: nothing is written)."""
    return os.environ.get(DEBUG_DIR_ENV) or None


def write_pid(folder: str, rank: int) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"rank{rank}.pid"), "w", encoding="utf-8") as fh:
        fh.write(str(os.getpid()))


def record_paths(ds: tf.data.Dataset, folder: str, rank: int, first_epoch: int, spe: int,
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


def save_final_weights(model: tf.keras.Model, folder: str, rank: int) -> None:
    model.save_weights(os.path.join(folder, f"rank{rank}_final.h5"))
