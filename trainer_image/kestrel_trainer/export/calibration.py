"""INT8 calibration without a GPU: batches, the original's tensorfile, entropy ranges, TensorRT's cache.

Batches are the spec's evaluation preprocessing (data/pipeline.make_dataset, PipelineOptions.for_evaluation)
of the calibration images, laid out NCHW like the exported model's input. ONNX Runtime's entropy calibrator
(histograms of every float tensor, threshold minimising the KL divergence, as TensorRT's
IInt8EntropyCalibrator2 does) gives an absolute range per tensor; TensorRT's cache stores the scale
amax / 127 of each tensor as the big-endian hex of its float32 bits, one `name: hex` line per tensor
after a `TRT-<version>-EntropyCalibration2` header. Tensor names are the ONNX graph's, which is what
TensorRT's ONNX parser names the network's tensors.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Optional

import numpy as np

from kestrel_trainer.errors import DataError

log = logging.getLogger(__name__)

# TensorRT 8.6 (what DeepStream 6.3 / 6.4 and TAO 5 ship); TensorRT reads the scales whatever the number.
CACHE_HEADER = "TRT-8601-EntropyCalibration2"
INT8_MAX = 127.0
TENSORFILE_KEY = "_tensorfile_array_key_"
DEFAULT_BATCHES = 10
DEFAULT_BATCH_SIZE = 8


def calibration_files(image_dir: str, n_images: int, n_workers: Optional[int] = None) -> list[str]:
    """The first `n_images` images under `image_dir` (sorted); DataError for an empty or undecodable folder."""
    from kestrel_trainer.data.check import exclude_bad_images
    from kestrel_trainer.data.folders import images_under

    try:
        files = images_under(image_dir)[:n_images]
    except DataError as err:
        raise DataError(f"--cal_image_dir: {err.message}") from None
    files, _, _ = exclude_bad_images(files, [0] * len(files), skip_bad_images=False, n_workers=n_workers,
                                     log=log.warning)
    return files


def preprocessed(files: Sequence[str], spec, batch_size: int) -> list[np.ndarray]:
    """Channels-last float32 batches of `files` with the spec's evaluation preprocessing (what evaluate feeds)."""
    from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset

    options = replace(PipelineOptions.for_evaluation(spec.model, spec.train, batch_size, spec.eval.enable_center_crop),
                      n_workers=spec.eval.n_workers)
    ds = make_dataset(list(files), [0] * len(files), 1, options)
    return [x.numpy() for x, _ in ds]


def image_batches(files: Sequence[str], spec, batch_size: int) -> list[np.ndarray]:
    """The same batches NCHW, as the exported model (and TensorRT's calibrator) takes them."""
    return [np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))) for x in preprocessed(files, spec, batch_size)]


def write_tensorfile(path: str, batches: Iterable[np.ndarray]) -> None:
    """The original's `--cal_data_file` format: HDF5, attribute `count`, group `<key>_<i>` per batch holding
    dataset `<key>` (key `_tensorfile_array_key_`), and the common batch shape in attribute `shape`."""
    import h5py

    from kestrel_trainer.model_io.files import write_atomic

    with tempfile.TemporaryDirectory() as tmp:
        scratch = os.path.join(tmp, "cal.tensorfile")
        with h5py.File(scratch, "w") as db:
            count = 0
            for i, batch in enumerate(batches):
                group = db.create_group(f"{TENSORFILE_KEY}_{i}")
                group.create_dataset(TENSORFILE_KEY, data=np.asarray(batch, np.float32), compression="gzip")
                db.attrs["shape"] = np.asarray(batch.shape)
                count = i + 1
            db.attrs["count"] = count
        with open(scratch, "rb") as fh:
            write_atomic(path, fh.read())


def read_tensorfile(path: str) -> list[np.ndarray]:
    """Batches of a tensorfile written by the original (or write_tensorfile); DataError when unreadable."""
    import h5py

    try:
        with h5py.File(path, "r") as db:
            count = int(db.attrs.get("count", 0))
            batches = [np.asarray(db[f"{TENSORFILE_KEY}_{i}"][TENSORFILE_KEY][()], np.float32) for i in range(count)]
    except FileNotFoundError:
        raise DataError(f"--cal_data_file not found: {path}") from None
    except (OSError, KeyError) as err:
        raise DataError(f"--cal_data_file {path} is not a tensorfile ({err})") from None
    if not batches:
        raise DataError(f"--cal_data_file {path} holds no batches")
    return batches


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over in-memory NCHW batches."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self.batches = list(batches)
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {self.input_name: self.batches[self.position - 1]}

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.batches = self.batches[start_index:end_index]
        self.position = 0

    def rewind(self) -> None:
        self.position = 0


def reader(onnx_bytes: bytes, batches: Sequence[np.ndarray]) -> _Reader:
    import onnx

    return _Reader(onnx.load_model_from_string(onnx_bytes).graph.input[0].name, batches)


def entropy_ranges(onnx_bytes: bytes, batches: Sequence[np.ndarray]) -> dict[str, float]:
    """{tensor name: amax} for every float tensor of the model, from entropy calibration over `batches`."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="kestrel-cal.") as tmp:
        model_path = os.path.join(tmp, "model.onnx")
        with open(model_path, "wb") as fh:
            fh.write(onnx_bytes)
        calibrator = create_calibrator(model_path, None, augmented_model_path=os.path.join(tmp, "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"symmetric": True})
        calibrator.collect_data(reader(onnx_bytes, batches))
        data = calibrator.compute_data()
    ranges = {}
    for name, value in data.items():
        low, high = (float(np.max(np.abs(v))) for v in value.range_value)
        ranges[name] = max(low, high)
    return ranges


def cache_text(ranges: dict[str, float], header: str = CACHE_HEADER) -> str:
    """TensorRT's calibration cache: the header, then `name: <big-endian hex of float32(amax/127)>` lines."""
    lines = [header]
    for name, amax in ranges.items():
        scale = max(float(amax), 1e-8) / INT8_MAX  # a constant-zero tensor still gets a usable scale
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def parse_cache(text: str, source: str = "calibration cache") -> tuple[str, dict[str, float]]:
    """(header, {tensor name: scale}) of a TensorRT calibration cache; DataError when it is not one."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise DataError(f"{source}: not a TensorRT calibration cache (no TRT-... header)")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(": ")
        try:
            if not sep:
                raise ValueError
            (scales[name],) = struct.unpack(">f", bytes.fromhex(value.strip()))
        except ValueError:
            raise DataError(f"{source}: line {number}: expected `tensor: 8 hex digits`, got {line!r}") from None
    return lines[0], scales


def read_cache(path: str) -> bytes:
    """The bytes of an existing cache, checked to be one (DataError naming the file and line otherwise)."""
    with open(path, "rb") as fh:
        data = fh.read()
    parse_cache(data.decode("utf-8", "replace"), path)
    return data
