"""save_model / load_model: the only way the rest of Kestrel reads or writes model files.

With a key the file is a `.tlt` container (see crypto.py) around a Keras 2 HDF5 model file held in
memory (architecture, weights and optimizer state: HDF5 round-trips the TF 2.15 optimizers' slots and
iteration count). Without a key (None or "") it is that HDF5 file itself, saved as `.hdf5`. Every
write goes to a temp file in the same folder, is fsynced and renamed over the target, so a crash or a
SIGTERM never leaves a half-written checkpoint.

All our layers are stock Keras layers (mish is built in), so loading needs no custom_objects.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Union

from kestrel_trainer.errors import ModelFileError
from kestrel_trainer.model_io import crypto

log = logging.getLogger(__name__)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PLAIN_SUFFIX = ".hdf5"
ENCRYPTED_SUFFIX = ".tlt"

PathLike = Union[str, os.PathLike]


def _error(path: PathLike) -> ModelFileError:
    return ModelFileError(f"wrong key or corrupt file: {path}")


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` via temp file + fsync + rename (+ fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems do not fsync directories; the rename itself is atomic
        pass


def model_to_h5_bytes(model, include_optimizer: bool = True) -> bytes:
    import h5py
    import tensorflow as tf

    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Keras calls HDF5 "legacy"; it is the format that round-trips Keras 2 optimizer state in memory.
        warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\\(\\)`.*")
        with h5py.File(buf, "w") as f:
            tf.keras.models.save_model(model, f, include_optimizer=include_optimizer, save_format="h5")
    return buf.getvalue()


def model_from_h5_bytes(data: bytes, compile: bool = True):
    import h5py
    import tensorflow as tf

    with h5py.File(io.BytesIO(data), "r") as f:
        if "model_config" not in f.attrs:
            raise ValueError("HDF5 file holds weights only, not a model")
        return tf.keras.models.load_model(f, compile=compile)


def plain_path(path: PathLike) -> Path:
    """Where a model lands without a key: the same name with the `.hdf5` suffix."""
    p = Path(path)
    return p if p.suffix == PLAIN_SUFFIX else p.with_suffix(PLAIN_SUFFIX)


def save_model(model, path: PathLike, key: Optional[str], include_optimizer: bool = True) -> Path:
    """Save `model` to `path` (encrypted with `key`) or, with no key, to `path` with suffix `.hdf5`.

    Returns the path actually written.
    """
    data = model_to_h5_bytes(model, include_optimizer=include_optimizer)
    if key:
        target = Path(path)
        write_atomic(target, crypto.encrypt(data, key))
    else:
        target = plain_path(path)
        log.warning("no key given: %s is written unencrypted (plain Keras HDF5)", target)
        write_atomic(target, data)
    return target


def read_model_bytes(path: PathLike, key: Optional[str]) -> bytes:
    """The HDF5 bytes of a model file (decrypted if it is a container)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelFileError(f"model file is a directory: {path}") from None
    if crypto.is_container(data):
        if not key:
            raise ModelFileError(f"{path} is encrypted: give the key with -k or KESTREL_KEY")
        try:
            header, payload = crypto.decrypt(data, key)
        except crypto.ContainerError as err:
            log.debug("cannot open %s: %s", path, err)
            raise _error(path) from None
        if header.payload != crypto.PAYLOAD_KERAS_H5:
            raise ModelFileError(f"{path}: unknown payload type {header.payload}")
        return payload
    if data[: len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
        return data
    raise _error(path)


def load_model(path: PathLike, key: Optional[str], compile: bool = True):
    """Load a model saved by `save_model` (or any Keras 2 HDF5 model file).

    A wrong key, a truncated or a corrupt file raise ModelFileError("wrong key or corrupt file: PATH").
    """
    data = read_model_bytes(path, key)
    try:
        return model_from_h5_bytes(data, compile=compile)
    except ModelFileError:
        raise
    except Exception as err:  # h5py/Keras raise many types for a damaged file
        log.debug("cannot load %s: %r", path, err)
        raise _error(path) from None
