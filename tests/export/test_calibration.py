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
    assert header == "TRT-8601-EntropyCalibration2"
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

