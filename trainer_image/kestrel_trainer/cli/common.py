"""Pieces every task command shares: the original's common flags, the key, logging."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec.contract import KEY_ENV
from kestrel_trainer.storage import UrlLogFilter

# How many ranks --gpus/--num_processes ask for: the train launcher needs it too, so it lives there.
from kestrel_trainer.train.launcher import resolve_processes  # noqa: F401 - part of this module's API

SPEC_HELP = "the experiment spec file (the original's text format; see `kestrel spec show`)"
KEY_HELP = f"model encryption key; prefer the {KEY_ENV} environment variable, which stays out of process listings"
KEY_WRITE_HELP = KEY_HELP + ". Without either, models are written as plain .hdf5"


def add_key_argument(parser: argparse.ArgumentParser, writes_models: bool = True) -> None:
    """-k/--key: commands that only read models (evaluate, inference) say nothing about how models are written."""
    parser.add_argument(
        "-k", "--key", default=None,
        help=KEY_WRITE_HELP if writes_models else KEY_HELP + " (needed to read an encrypted .tlt/.etlt)",
    )


# Encrypted model file formats a command can write (model_io.files.FORMATS, without importing it for --help).
MODEL_FORMATS = ("kestrel", "tao")


def add_format_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--format", dest="model_format", choices=MODEL_FORMATS, default="kestrel",
                        help=f"encrypted {what} format: kestrel (default; authenticated, a wrong key is a clear "
                        "error) or tao (the original's .tlt: AES-CTR over a channels-first HDF5, no optimizer "
                        "state, for downstream tools that need it)")


def check_format_key(model_format: str, key: Optional[str]) -> None:
    """--format tao writes the original's encrypted .tlt, which needs a key."""
    if model_format == "tao" and not key:
        raise KestrelError("--format tao writes the original's encrypted .tlt: give the key with -k or "
                           f"{KEY_ENV}", exit_code=2)


@contextmanager
def task_status(results_dir: Optional[str], task: str, started: Optional[str] = None) -> Iterator[object]:
    """RESULTS/status.json for a one-shot task, as the original writes it: only when -r is given; `started`
    (if any) as STARTED, then FAILURE with the error's one line (or "<Task> was interrupted"). Yields the
    StatusLogger (None without -r); the command writes its own RUNNING/SUCCESS lines."""
    from kestrel_trainer.report.status import StatusLogger

    status = StatusLogger(os.path.join(results_dir, "status.json")) if results_dir else None
    if status:
        try:  # a folder that cannot be written is the user's to fix: one line, before any work
            os.makedirs(results_dir, exist_ok=True)
            with open(status.path, "a", encoding="utf-8"):
                pass
        except OSError as err:
            raise KestrelError(f"-r/--results_dir {results_dir}: cannot write {status.path} "
                               f"({err.strerror or err})", exit_code=2) from None
    if status and started:
        status.write("STARTED", started)
    try:
        yield status
    except KeyboardInterrupt:
        if status:
            status.write("FAILURE", f"{task.capitalize()} was interrupted")
        raise
    except Exception as err:  # KestrelError: its one line; anything else: str(err), as the original
        if status:
            from kestrel_trainer.storage import describe  # local copies of s3:// paths named by their URLs

            status.write("FAILURE", describe(getattr(err, "message", None) or str(err) or type(err).__name__))
        raise


def add_common_task_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags the original accepts on every task (`--gpus`, `--gpu_index`, `--log_file`, ...)."""
    # None = not given: resolved at start by train.devices.check (the GPUs there are, else the CPU, said in one
    # line); given, it is a requirement: fewer visible GPUs is a one-line error, exit 2. The original's default is 1.
    parser.add_argument("--gpus", type=int, default=None,
                        help="number of GPUs to use; fails at start if fewer are visible. 0: the CPU. Default: "
                        "1 if a GPU is visible, else the CPU (said in one line)")
    parser.add_argument("--num_processes", "-np", type=int, default=-1,
                        help="data-parallel ranks; -1 (the default, as the original) means as many as --gpus")
    parser.add_argument("--gpu_index", type=int, nargs="+", default=None, help="GPU ids to use")
    parser.add_argument("--use_amp", action="store_true", help="automatic mixed precision (GPU only)")
    parser.add_argument("--log_file", default=None, help="also write plain log lines to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def apply_device_flags(args: argparse.Namespace) -> None:
    """--gpus/--gpu_index/--use_amp for a one-process task (evaluate, inference), as the original's launcher:
    --gpus is checked against what TensorFlow sees (train.devices: no silent CPU),
    the task sees the GPUs --gpu_index lists (default: the first --gpus), and --use_amp turns on TensorFlow's
    automatic mixed precision graph rewrite. Imports TensorFlow: call it from run(), never at import time.
    """
    import tensorflow as tf

    from kestrel_trainer.train import devices

    log = logging.getLogger("kestrel")
    resolved = devices.check(args)  # an explicit --gpus N that cannot be met: one line, exit 2
    gpus = tf.config.list_physical_devices("GPU")
    wanted = list(args.gpu_index) if args.gpu_index else list(range(max(resolved, 1)))
    if not resolved or not gpus:
        if gpus:
            tf.config.set_visible_devices([], "GPU")  # --gpus 0: the CPU, as asked
        if args.gpu_index or args.use_amp:
            log.warning("on the CPU: --gpu_index/--use_amp have no effect, running in float32")
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
    stream.addFilter(UrlLogFilter())  # local copies of s3:// paths are named by their URLs
    root.addHandler(stream)
    if log_file:
        folder = os.path.dirname(os.path.abspath(log_file))
        os.makedirs(folder, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(fmt)
        handler.addFilter(UrlLogFilter())
        root.addHandler(handler)
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def stage_spec_inputs(spec, *, train: bool = False, evaluate: bool = False):
    """The spec with its s3:// dataset and model paths replaced by their local copies (staged into the cache:
    listed once, downloaded only when not there yet; docs/storage.md). Local paths stay as they are."""
    from dataclasses import replace

    from kestrel_trainer.storage import input_path

    if train:  # the datasets lazily: listed now, each rank fetches only the files of its shard (data/check.py)
        tr = spec.train
        spec = replace(spec, train=replace(
            tr, train_dataset_path=input_path(tr.train_dataset_path, lazy=True),
            val_dataset_path=input_path(tr.val_dataset_path, lazy=True),
            pretrained_model_path=input_path(tr.pretrained_model_path or "") or tr.pretrained_model_path))
    if evaluate:
        ev = spec.eval
        spec = replace(spec, eval=replace(ev, eval_dataset_path=input_path(ev.eval_dataset_path)))
    return spec


def stage_model(path: Optional[str]) -> Optional[str]:
    """-m MODEL: an s3:// model staged locally together with its run's classmap.json (beside it or one folder up,
    where evaluate/inference/export look for it, as in a local run folder). Local paths stay as they are."""
    from kestrel_trainer import storage

    if not storage.is_url(path):
        return path
    local = storage.input_path(path)
    folder = path.rsplit("/", 1)[0]
    for candidate in (folder, folder.rsplit("/", 1)[0]):
        if candidate.count("/") >= 2 and storage.input_if_exists(f"{candidate}/classmap.json"):
            break
    return local
