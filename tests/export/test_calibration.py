"""INT8 calibration without a GPU: the batches, the original's tensorfile, TensorRT's cache format, the
engine's optimization profile, and the one-line error where TensorRT is missing."""

from __future__ import annotations

import struct

import h5py
import numpy as np
import pytest

from kestrel_trainer.errors import DataError
from kestrel_trainer.export import calibration, onnx_model, tensorrt_engine
from kestrel_trainer.spec import load_spec
from tests.export.conftest import tiny_model, write_spec


@pytest.fixture(scope="module")
def spec(fashion, tmp_path_factory):
    return load_spec(write_spec(tmp_path_factory.mktemp("spec"), fashion))


def test_batches_are_the_spec_preprocessing_in_nchw(spec, fashion):
    files = calibration.calibration_files(str(fashion / "train"), 3 * 5)
    assert len(files) == 15
    batches = calibration.image_batches(files, spec, 5)
    assert [b.shape for b in batches] == [(5, 1, 32, 32)] * 3
    # same pixels as evaluation preprocessing (channels last) of the same files, only transposed
    nhwc = np.concatenate(calibration.preprocessed(files, spec, 15))
    np.testing.assert_array_equal(np.concatenate(batches), nhwc.transpose(0, 3, 1, 2))
    # torch mode on grey: (x/255 - .449)/.224, so a real image spans roughly [-2, 2.5]
    assert -2.1 < np.concatenate(batches).min() < 0 < np.concatenate(batches).max() < 2.5


def test_empty_and_undecodable_calibration_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="--cal_image_dir: no images"):
        calibration.calibration_files(str(tmp_path / "empty"), 8)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png"):
        calibration.calibration_files(str(bad), 8)


def test_tensorfile_reads_the_original_layout_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    original = tmp_path / "original.tensorfile"
    with h5py.File(original, "w") as db:  # the original TensorFile's layout, written independently
        for i, b in enumerate(batches):
            db.create_group(f"_tensorfile_array_key__{i}").create_dataset("_tensorfile_array_key_", data=b)
        db.attrs["count"] = 3
    for got in (calibration.read_tensorfile(str(original)),):
        assert len(got) == 3 and all(np.array_equal(a, b) for a, b in zip(got, batches))
    ours = tmp_path / "ours.tensorfile"
    calibration.write_tensorfile(str(ours), batches)
    with h5py.File(ours, "r") as db:
        assert int(db.attrs["count"]) == 3
        np.testing.assert_array_equal(db["_tensorfile_array_key__2"]["_tensorfile_array_key_"][()], batches[2])
    with pytest.raises(DataError, match="not a tensorfile"):
        (tmp_path / "junk").write_bytes(b"junk")
        calibration.read_tensorfile(str(tmp_path / "junk"))


def test_cache_has_one_positive_scale_per_tensor_of_the_model(spec, fashion):
    proto = onnx_model.keras_to_onnx(tiny_model())
    files = calibration.calibration_files(str(fashion / "train"), 16)
    ranges = calibration.entropy_ranges(proto.SerializeToString(), calibration.image_batches(files, spec, 8))
    text = calibration.cache_text(ranges)
    header, scales = calibration.parse_cache(text)
    assert header == "TRT-8601-EntropyCalibration2"  # no TensorRT here: 8.6.1's header
    tensors = {"input_1"} | {o for n in proto.graph.node for o in n.output}
    assert set(scales) <= tensors and {"input_1", "predictions"} <= set(scales)
    assert all(s > 0 for s in scales.values())
    # each line is the float32 big-endian hex of amax / 127 (TensorRT's encoding), e.g. the softmax output
    line = next(line for line in text.splitlines() if line.startswith("predictions: "))
    assert struct.unpack(">f", bytes.fromhex(line.split(": ")[1]))[0] == pytest.approx(ranges["predictions"] / 127)
    assert ranges["predictions"] <= 1.0 + 1e-6  # a probability never exceeds 1
    # the input's range covers (most of) the preprocessed images' values, entropy may clip outliers
    assert 0.5 < ranges["input_1"] <= 2.5
    assert calibration.parse_cache(calibration.cache_text({"t": 127.0}))[1] == {"t": 1.0}


def test_bad_cache_names_its_line():
    with pytest.raises(DataError, match="line 3"):
        calibration.parse_cache("TRT-8601-EntropyCalibration2\na: 3c010204\nb 3c0\n", "cal.bin")
    with pytest.raises(DataError, match="no TRT"):
        calibration.parse_cache("hello\n", "cal.bin")


def test_optimization_profile():
    p = tensorrt_engine.optimization_profile("input_1", (3, 224, 224), 1, 8, 16)
    assert (p.min_shape, p.opt_shape, p.max_shape) == ((1, 3, 224, 224), (8, 3, 224, 224), (16, 3, 224, 224))
    static = tensorrt_engine.optimization_profile("input_1", (1, 32, 32), 1, 8, 16, static_batch=4)
    assert static.min_shape == static.opt_shape == static.max_shape == (4, 1, 32, 32)
    with pytest.raises(onnx_model.ExportError, match="--min_batch_size"):
        tensorrt_engine.optimization_profile("input_1", (3, 8, 8), 4, 2, 8)


def test_missing_tensorrt_is_one_line_exit_2():
    with pytest.raises(tensorrt_engine.TensorRTMissing) as err:
        tensorrt_engine.require_tensorrt()
    assert err.value.exit_code == 2 and "\n" not in err.value.message
    assert "TensorRT is not installed" in err.value.message



def reference_entropy_amax(x: np.ndarray, bins: int = 2048, first: int = 128, levels: int = 128) -> float:
    """An independent NumPy transcription of TensorRT's entropy calibration as NVIDIA's GTC 2017 talk "8-bit
    Inference with TensorRT" gives it (a plain loop, no shared code with calibration.py): histogram of |x| in
    2048 bins; for i in 128..2047, P = bins[0:i] with the outliers added to bin i-1, Q = bins[0:i] quantized to
    128 levels and expanded back over P's non-empty bins; threshold = (m + 0.5) * bin width at the smallest
    KL(P || Q). Before KL each empty bin gets 1e-4 counts, taken evenly from the others (the smoothing of MXNet's
    and ONNX Runtime's public implementations of the talk, which it does not specify)."""
    a = np.abs(x.astype(np.float64)).ravel()
    hist, edges = np.histogram(a, bins=bins, range=(0.0, a.max()))
    width = edges[1] - edges[0]

    divergences = {}
    for i in range(first, bins):
        p = hist[:i].astype(np.float64)
        p[i - 1] += hist[i:].sum()
        per_level = i // levels
        q = np.zeros(i)
        for level in range(levels):
            lo = level * per_level
            hi = i if level == levels - 1 else lo + per_level
            chunk = hist[lo:hi]
            used = np.count_nonzero(chunk)
            if used:
                q[lo:hi] = np.where(chunk != 0, chunk.sum() / used, 0.0)
        for d in (p, q):
            empty = d == 0
            d += 1e-4 * empty - 1e-4 * empty.sum() / (~empty).sum() * ~empty
        p, q = p / p.sum(), q / q.sum()
        divergences[i] = sum(pb * np.log(pb / qb) for pb, qb in zip(p, q))
    m = min(divergences, key=divergences.get)
    return (m + 0.5) * width


def identity_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_entropy_calibration_clips_outliers_as_tensorrt_does():
    """N(0,1) data with 5 outliers at 40: TensorRT's entropy search (2048 bins, from 128) clips them, where ONNX
    Runtime's default entropy settings (128 bins) have one candidate, the full range 40. Our amax is the
    independent reference's to within a bin of the histogram."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal(100_000).astype(np.float32)
    data[rng.choice(data.size, 5, replace=False)] = 40.0
    batches = [data[i:i + 20_000].reshape(-1, 4) for i in range(0, data.size, 20_000)]
    reference = reference_entropy_amax(data)
    assert 4.0 < reference < 10.0  # the outliers are clipped: beyond the bulk (|x| <= 4.5), far below 40
    ranges = calibration.entropy_ranges(identity_model(), batches)
    assert set(ranges) == {"x", "y"}
    for amax in ranges.values():
        assert abs(amax - reference) <= 40.0 / 2048 + 1e-6


def test_cache_header_names_the_running_tensorrt(monkeypatch):
    """TensorRT's own version number (NV_TENSORRT_VERSION): 8.6.1 -> 8601, 10.3.0 -> 100300, as in caches it
    wrote; without TensorRT, 8.6.1's."""
    import sys
    import types

    assert calibration.cache_header() == "TRT-8601-EntropyCalibration2"
    for version, header in (("10.3.0.26", "TRT-100300-EntropyCalibration2"),
                            ("8.4.1.5", "TRT-8401-EntropyCalibration2"),
                            ("10.14.1", "TRT-101401-EntropyCalibration2")):
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
        assert calibration.cache_header() == header
        assert calibration.cache_text({"t": 1.0}).splitlines()[0] == header
