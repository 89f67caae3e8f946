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
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from kestrel_trainer.errors import ModelFileError
from kestrel_trainer.model_io import crypto

log = logging.getLogger(__name__)

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
PLAIN_SUFFIX = ".hdf5"
ENCRYPTED_SUFFIX = ".tlt"

PathLike = Union[str, os.PathLike]


# The formats a model file can be in; the names appear in error messages.
FORMAT_KESTREL = "Kestrel .tlt (authenticated)"
FORMAT_HDF5 = "plain Keras HDF5"
FORMAT_TAO = "the original's .tlt (AES-CTR over HDF5)"
FORMATS = {"kestrel": FORMAT_KESTREL, "tao": FORMAT_TAO}  # what save_model can write with a key


def _corrupt(path: PathLike, fmt: str) -> ModelFileError:
    return ModelFileError(f"wrong key or corrupt file: {path} ({fmt})")


def _umask() -> int:
    """The process umask (read without changing it where /proc allows; else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` via temp file + fsync + rename (+ fsync of the folder).

    The file gets the permissions a plain open() would give (0666 minus the umask), not mkstemp's 0600,
    so other users and tools can read results as the user's umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


def write_json_atomic(path: PathLike, data: Any) -> None:
    """`data` as indented JSON (summary.json, results.json, ...), written as write_atomic does."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


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


def save_model(model, path: PathLike, key: Optional[str], include_optimizer: bool = True,
               format: str = "kestrel") -> Path:
    """Save `model` to `path` encrypted with `key` or, with no key, to `path` with suffix `.hdf5`.

    format "kestrel" (default): our authenticated container. format "tao": the original's `.tlt` (its
    AES-256-CTR stream over the HDF5 file, no authentication) for downstream tools that need it; the
    model is written channels-first as the original's are. Returns the path actually written.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown model file format {format!r}; expected one of {', '.join(FORMATS)}")
    if key and format == "tao":
        from kestrel_trainer.model_io import layout, tao_crypto

        data = model_to_h5_bytes(layout.channels_first_copy(model), include_optimizer=False)
        target = Path(path)
        write_atomic(target, tao_crypto.encrypt_stream(data, key))
        return target
    data = model_to_h5_bytes(model, include_optimizer=include_optimizer)
    if key:
        target = Path(path)
        write_atomic(target, crypto.encrypt(data, key))
    else:
        target = plain_path(path)
        log.warning("no key given: %s is written unencrypted (plain Keras HDF5)", target)
        write_atomic(target, data)
    return target


def read_model(path: PathLike, key: Optional[str]) -> tuple[bytes, str]:
    """(HDF5 bytes, format name) of a model file: ours, the original's `.tlt`, or plain HDF5.

    The one place that tells the formats apart. Ours starts with a magic; HDF5 with its signature; the
    original's `.tlt` is random-looking bytes, recognised only by decrypting it with the key and finding
    the HDF5 signature (its format has no authentication, so a wrong key cannot be told from a foreign file).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelFileError(f"model file is a directory: {path}") from None
    if crypto.is_container(data):
        if not key:
            raise ModelFileError(f"{path} is encrypted ({FORMAT_KESTREL}): give the key with -k or KESTREL_KEY")
        try:
            header, payload = crypto.decrypt(data, key)
        except crypto.ContainerError as err:
            log.debug("cannot open %s: %s", path, err)
            raise ModelFileError(f"wrong key or corrupt file: {path} ({FORMAT_KESTREL}: {err})") from None
        if header.payload != crypto.PAYLOAD_KERAS_H5:
            raise ModelFileError(f"{path}: unknown payload type {header.payload} ({FORMAT_KESTREL})")
        return payload, FORMAT_KESTREL
    if data[: len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
        return data, FORMAT_HDF5
    if not key:
        raise ModelFileError(f"{path}: neither a {FORMAT_KESTREL} nor {FORMAT_HDF5} file; if it is {FORMAT_TAO}, "
                             "give its key with -k or KESTREL_KEY")
    from kestrel_trainer.model_io import tao_crypto

    try:
        plain = tao_crypto.decrypt_stream(data, key)
    except ValueError:
        plain = b""
    if plain[: len(HDF5_SIGNATURE)] != HDF5_SIGNATURE:
        raise ModelFileError(
            f"{path}: wrong key or not a model file: it is neither a {FORMAT_KESTREL} nor {FORMAT_HDF5}, and "
            f"decrypted as {FORMAT_TAO} with this key it is not HDF5 (the original's .tlt format has no "
            "authentication, so a wrong key shows only this way)")
    return plain, FORMAT_TAO


def read_model_bytes(path: PathLike, key: Optional[str]) -> bytes:
    """The HDF5 bytes of a model file (decrypted if it is encrypted in either format)."""
    return read_model(path, key)[0]


def layer_weights_from_h5(data: bytes) -> dict[str, list]:
    """{layer name: [arrays in the layer's weight order]} of a Keras HDF5 model or weights file."""
    import h5py
    import numpy as np

    def text(v) -> str:
        return v.decode("utf-8") if isinstance(v, bytes) else str(v)

    out: dict[str, list] = {}
    with h5py.File(io.BytesIO(data), "r") as f:
        group = f.get("model_weights", f)
        for name in (text(n) for n in group.attrs["layer_names"]):
            names = [text(w) for w in group[name].attrs.get("weight_names", [])]
            if names:
                out[name] = [np.asarray(group[name][w]) for w in names]
    return out


def _model_config(data: bytes) -> Optional[dict]:
    import json

    import h5py

    with h5py.File(io.BytesIO(data), "r") as f:
        raw = f.attrs.get("model_config")
    if raw is None:
        return None
    return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)


def _load_channels_first(data: bytes, config: dict, path: PathLike):
    """Rebuild an NCHW model channels-last with its own layer names and weights (see layout.py)."""
    import tensorflow as tf

    from kestrel_trainer.model_io import layout

    converted, permute = layout.to_channels_last(config, str(path))
    model = tf.keras.models.model_from_config(converted)
    weights = layer_weights_from_h5(data)
    for layer in model.layers:
        if not layer.weights:
            continue
        arrays = weights.get(layer.name)
        if arrays is None:
            raise ModelFileError(f"{path}: layer {layer.name!r} has no weights in the file")
        if layer.name in permute:
            _, h, w, c = model.get_layer(permute[layer.name]).input_shape
            arrays = [layout.chw_rows_to_hwc(arrays[0], (c, h, w)), *arrays[1:]]
        layer.set_weights(arrays)
    log.info("%s is channels-first (the original's layout): rebuilt channels-last, same layer names and outputs; "
             "its optimizer state is not carried over", path)
    return model


def layer_weights(path: PathLike, key: Optional[str]) -> dict[str, list]:
    """{layer name: arrays} of a model or weights file in any format, channels-last (pretrained weights)."""
    data, fmt = read_model(path, key)
    try:
        config = _model_config(data)
        from kestrel_trainer.model_io import layout

        if config is not None and layout.is_channels_first(config):
            model = _load_channels_first(data, config, path)
            return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
        return layer_weights_from_h5(data)
    except ModelFileError:
        raise
    except Exception as err:
        log.debug("cannot read weights from %s: %r", path, err)
        raise _corrupt(path, fmt) from None


def load_model(path: PathLike, key: Optional[str], compile: bool = True):
    """Load a model file: ours (`save_model`), the original's `.tlt`, or any Keras 2 HDF5 model file.

    Channels-first models (the original's) come back channels-last, uncompiled (layout.py). A wrong key,
    a truncated or a corrupt file raise ModelFileError naming the file and its format.
    """
    data, fmt = read_model(path, key)
    try:
        config = _model_config(data)
        if config is None:
            raise ModelFileError(f"{path}: holds weights only, not a model ({fmt})")
        from kestrel_trainer.model_io import layout

        if layout.is_channels_first(config):
            return _load_channels_first(data, config, path)
        return model_from_h5_bytes(data, compile=compile)
    except ModelFileError:
        raise
    except Exception as err:  # h5py/Keras raise many types for a damaged file
        log.debug("cannot load %s: %r", path, err)
        raise _corrupt(path, fmt) from None
