"""Pieces every task command shares: the original's common flags, the key, logging."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec.contract import KEY_ENV

# How many ranks --gpus/--num_processes ask for: the train launcher needs it too, so it lives there.
from kestrel_trainer.train.launcher import resolve_processes  # noqa: F401 - part of this module's API


def add_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-k", "--key", default=None,
        help=f"model encryption key; prefer the {KEY_ENV} environment variable, which stays out of process "
        "listings. Without either, models are written as plain .hdf5",
    )


def add_common_task_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags the original accepts on every task (`--gpus`, `--gpu_index`, `--log_file`, ...)."""
    parser.add_argument("--gpus", type=int, default=1, help="number of GPUs to use (default 1)")
    parser.add_argument("--num_processes", "-np", type=int, default=-1,
                        help="data-parallel ranks; -1 (the default, as the original) means as many as --gpus")
    parser.add_argument("--gpu_index", type=int, nargs="+", default=None, help="GPU ids to use")
    parser.add_argument("--use_amp", action="store_true", help="automatic mixed precision (GPU only)")
    parser.add_argument("--log_file", default=None, help="also write plain log lines to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def apply_device_flags(args: argparse.Namespace) -> None:
    """--gpus/--gpu_index/--use_amp for a one-process task (evaluate, inference), as the original's launcher:
    the task sees the GPUs --gpu_index lists (default: the first --gpus), and --use_amp turns on TensorFlow's
    automatic mixed precision graph rewrite. Imports TensorFlow: call it from run(), never at import time.
    """
    import tensorflow as tf

    log = logging.getLogger("kestrel")
    gpus = tf.config.list_physical_devices("GPU")
    wanted = list(args.gpu_index) if args.gpu_index else list(range(max(getattr(args, "gpus", 1) or 1, 1)))
    if not gpus:
        if args.gpu_index or args.use_amp or (getattr(args, "gpus", 1) or 1) > 1:
            log.warning("no GPU visible: --gpus/--gpu_index/--use_amp have no effect, running on the CPU in float32")
        return
    missing = [i for i in wanted if i >= len(gpus)]
    if missing:
        raise KestrelError(f"--gpu_index {' '.join(map(str, missing))}: only {len(gpus)} GPU(s) visible "
                           f"(0..{len(gpus) - 1})", exit_code=2)
    tf.config.set_visible_devices([gpus[i] for i in wanted], "GPU")
    log.info("using GPU(s) %s", ",".join(map(str, wanted)))
    if args.use_amp:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision": True})
        log.info("automatic mixed precision on (float16 compute where safe)")


def resolve_key(args: argparse.Namespace) -> Optional[str]:
    key = getattr(args, "key", None) or os.environ.get(KEY_ENV) or None
    return key


def require_key_for(path: str, key: Optional[str]) -> None:
    """An encrypted model needs a key: say so plainly instead of failing to decrypt."""
    if path.endswith((".tlt", ".etlt")) and not key:
        raise KestrelError(f"{path} is encrypted: give the key with -k or the {KEY_ENV} environment variable",
                           exit_code=2)


def setup_logging(log_file: Optional[str] = None, verbose: bool = False) -> None:
    """Plain timestamped lines on stderr and, with --log_file, in that file; quiet TensorFlow's C++ logs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if log_file:
        folder = os.path.dirname(os.path.abspath(log_file))
        os.makedirs(folder, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(fmt)
        root.addHandler(handler)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
