"""INT8 calibration without a GPU: batches, the original's tensorfile, entropy ranges, TensorRT's cache.

Batches are the spec's evaluation preprocessing (data/pipeline.make_dataset, PipelineOptions.for_evaluation)
of the calibration images, laid out NCHW like the exported model's input. Entropy calibration is TensorRT's
(IInt8EntropyCalibrator2, as NVIDIA's "8-bit Inference with TensorRT" describes it): ONNX Runtime runs the model
with every float tensor as an output, a first pass finds each tensor's max |x|, a second fills a histogram of |x|
with 2048 bins over [0, max]; the threshold is the one, among the first 128..2047 bins, whose 128-level
quantization loses the least information (KL divergence), so a few outliers are clipped instead of stretching
the range. TensorRT's cache stores the scale amax / 127 of each tensor as the big-endian hex of its float32
bits, one `name: hex` line per tensor after a `TRT-<version>-EntropyCalibration2` header. Tensor names are the
ONNX graph's, which is what TensorRT's ONNX parser names the network's tensors.
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
from kestrel_trainer.progress import progress

log = logging.getLogger(__name__)

# The cache header names the TensorRT version that reads it; without TensorRT here we write 8.6.1's (what
# DeepStream 6.3 / 6.4 and TAO 5 ship). A TensorRT of another version may refuse the cache and recalibrate.
DEFAULT_TRT_VERSION = "8.6.1"
HISTOGRAM_BINS = 2048  # TensorRT's entropy calibrator: 2048 bins of |x| ...
FIRST_CANDIDATE = 128  # ... thresholds searched from 128 bins ...
QUANTIZED_BINS = 128  # ... each quantized into 128 levels (int8's positive half)
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


def preprocessed(files: Sequence[str], spec, batch_size: int, desc: str = "preprocess") -> list[np.ndarray]:
    """Channels-last float32 batches of `files` with the spec's evaluation preprocessing (what evaluate feeds)."""
    from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset

    options = replace(PipelineOptions.for_evaluation(spec.model, spec.train, batch_size, spec.eval.enable_center_crop),
                      n_workers=spec.eval.n_workers)
    ds = make_dataset(list(files), [0] * len(files), 1, options)
    n_batches = -(-len(files) // max(1, batch_size))
    return [x.numpy() for x, _ in progress(ds, total=n_batches, desc=desc, unit="batch")]


def image_batches(files: Sequence[str], spec, batch_size: int) -> list[np.ndarray]:
    """The same batches NCHW, as the exported model (and TensorRT's calibrator) takes them."""
    return [np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))
            for x in preprocessed(files, spec, batch_size, desc="calibration images")]


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


def float_tensors(proto) -> list[str]:
    """The model's float32 tensors in graph order: its input and every node output (shape inference types)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    names = [i.name for i in proto.graph.input]
    names += [o for node in proto.graph.node for o in node.output if o]
    return [n for n in dict.fromkeys(names) if types.get(n) == onnx.TensorProto.FLOAT]


def _tensor_values(onnx_bytes: bytes, batches: Sequence[np.ndarray]):
    """A function yielding {tensor name: values} per batch, ONNX Runtime running the graph as written."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load_model_from_string(onnx_bytes)
    names = float_tensors(proto)
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name not in present:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph's own tensors
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = proto.graph.input[0].name

    def run():
        for batch in batches:
            yield dict(zip(names, session.run(names, {input_name: batch})))

    return names, run


def entropy_threshold(hist: np.ndarray, amax: float) -> float:
    """TensorRT's entropy threshold for a histogram of |x| (HISTOGRAM_BINS bins over [0, amax]).

    For each candidate i in FIRST_CANDIDATE..bins-1: P = the first i bins with the outliers beyond added to the
    last; Q = those i bins (without outliers) merged into QUANTIZED_BINS levels, each level's count spread evenly
    over its non-empty bins; the threshold is (m + 0.5) bin widths for the i = m with the smallest KL(P || Q)
    (empty bins smoothed with 1e-4 counts).
    """
    hist = np.asarray(hist, np.float64)
    bins = hist.size
    if amax <= 0 or hist.sum() == 0:
        return float(amax)
    if bins <= FIRST_CANDIDATE:
        return float(amax)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    best_kl, best_i = np.inf, bins - 1
    for i in range(FIRST_CANDIDATE, bins):
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += tail[i]
        merged = i // QUANTIZED_BINS
        starts = np.arange(QUANTIZED_BINS) * merged  # the last level also takes the remainder
        nonzero = sliced != 0
        level_counts = np.add.reduceat(sliced, starts)
        level_nonzero = np.add.reduceat(nonzero.astype(np.float64), starts)
        sizes = np.diff(np.append(starts, i))
        per_bin = np.divide(level_counts, level_nonzero, out=np.zeros_like(level_counts), where=level_nonzero > 0)
        q = np.repeat(per_bin, sizes) * nonzero
        kl = _kl_divergence(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float((best_i + 0.5) * amax / bins)


def _smoothed(counts: np.ndarray, eps: float = 1e-4) -> Optional[np.ndarray]:
    """Counts with eps given to each empty bin and taken evenly from the others (MXNet's and ONNX Runtime's
    implementations of the talk do this), so that KL stays finite; None when that is impossible."""
    zero = counts == 0
    n_zero = int(zero.sum())
    n_nonzero = counts.size - n_zero
    if n_nonzero == 0:
        return None
    smoothed = counts + eps * zero - (eps * n_zero / n_nonzero) * ~zero
    return smoothed if np.all(smoothed > 0) else None


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(P || Q) of the smoothed, normalised counts."""
    p, q = _smoothed(p), _smoothed(q)
    if p is None or q is None:
        return np.inf
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def entropy_ranges(onnx_bytes: bytes, batches: Sequence[np.ndarray]) -> dict[str, float]:
    """{tensor name: amax} for every float tensor of the model, from TensorRT's entropy calibration."""
    names, run = _tensor_values(onnx_bytes, batches)
    amax = dict.fromkeys(names, 0.0)
    n = len(batches)
    for values in progress(run(), total=n, desc="calibration 1/2 (ranges)", unit="batch"):  # pass 1: each range
        for name, value in values.items():
            if value.size:
                amax[name] = max(amax[name], float(np.max(np.abs(value))))
    hists = {name: np.zeros(HISTOGRAM_BINS, np.int64) for name in names}
    for values in progress(run(), total=n, desc="calibration 2/2 (histograms)", unit="batch"):  # |x| histograms
        for name, value in values.items():
            if amax[name] > 0:
                hists[name] += np.histogram(np.abs(value), HISTOGRAM_BINS, range=(0.0, amax[name]))[0]
    return {name: entropy_threshold(hists[name], amax[name]) for name in names}


def trt_version_code(version: str) -> int:
    """TensorRT's version number in a cache header: 8.6.1 -> 8601, 10.3.0 -> 100300 (NV_TENSORRT_VERSION)."""
    major, minor, patch = (int(part) for part in (version.split(".") + ["0", "0"])[:3])
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def cache_header() -> str:
    """`TRT-<version>-EntropyCalibration2` for the TensorRT that is importable, else DEFAULT_TRT_VERSION's."""
    try:
        import tensorrt

        version = str(tensorrt.__version__)
    except ImportError:
        version = DEFAULT_TRT_VERSION
        log.info("TensorRT is not installed: the calibration cache is written for TensorRT %s", version)
    return f"TRT-{trt_version_code(version)}-EntropyCalibration2"


def cache_text(ranges: dict[str, float], header: Optional[str] = None) -> str:
    """TensorRT's calibration cache: the header (cache_header() by default), then
    `name: <big-endian hex of float32(amax/127)>` lines."""
    lines = [header or cache_header()]
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
