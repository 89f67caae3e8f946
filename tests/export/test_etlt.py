"""The .etlt the original's deploy tools read, checked with NVIDIA's own codec (tests/nvidia_codec.py) as the
oracle: what Kestrel writes decrypts with NVIDIA's `decrypt_stream` into a valid ONNX model that computes what
the Keras model computes, and what NVIDIA's `encrypt_stream` writes, Kestrel reads."""

from __future__ import annotations

import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from kestrel_trainer.cli.main import main
from kestrel_trainer.errors import ModelFileError
from kestrel_trainer.export import onnx_model
from tests.export.conftest import real_test_batch, tiny_model
from tests.nvidia_codec import nvidia_decrypt, nvidia_encrypt

KEY = "nvidia_tlt"


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return onnx_model.keras_to_onnx(tiny_model()).SerializeToString()


def test_exported_etlt_decrypts_with_nvidias_codec_into_the_model(capsys, tmp_path, spread_run, fashion):
    """`kestrel export -o X.etlt`, then the original's layout read by hand and the stream by NVIDIA's codec: a
    checker-clean ONNX that gives the Keras model's scores on real images (NCHW, as DeepStream feeds it)."""
    import tensorflow as tf

    run, spec_path = spread_run
    out = tmp_path / "model.etlt"
    assert main(["export", "-m", str(run), "-o", str(out), "-k", KEY, "-e", str(spec_path)]) == 0, \
        capsys.readouterr().err
    data = out.read_bytes()
    (name_length,) = struct.unpack("<i", data[:4])
    assert name_length == 0  # ONNX: no input-node name
    plain = nvidia_decrypt(data[4:], KEY)
    proto = onnx.load_model_from_string(plain)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input_1"] and proto.graph.output[0].name == "predictions"

    nhwc = real_test_batch(fashion, spec_path)
    keras = tf.keras.models.load_model(run, compile=False).predict(nhwc, verbose=0)
    session = ort.InferenceSession(plain, providers=["CPUExecutionProvider"])
    deployed = session.run(["predictions"], {"input_1": np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))})[0]
    assert np.abs(deployed - keras).max() <= 1e-4
    assert keras.argmax(1).tolist() == deployed.argmax(1).tolist() and len(set(keras.argmax(1))) > 1


def test_an_etlt_made_with_nvidias_codec_is_read(tmp_path, onnx_bytes):
    """The original's layout around NVIDIA's encrypt_stream: Kestrel's reader gives back the same ONNX bytes."""
    path = tmp_path / "nvidia.etlt"
    path.write_bytes(struct.pack("<i", 0) + nvidia_encrypt(onnx_bytes, KEY))
    assert onnx_model.read_onnx_bytes(str(path), KEY) == onnx_bytes
    with pytest.raises(ModelFileError, match="wrong key or corrupt file"):
        onnx_model.read_onnx_bytes(str(path), "not-the-key")


def test_wrong_key_is_one_clear_error(tmp_path, onnx_bytes):
    path = tmp_path / "m.etlt"
    path.write_bytes(onnx_model.encode(onnx_bytes, str(path), "right"))
    with pytest.raises(ModelFileError, match=r"wrong key or corrupt file: .*m\.etlt \(the decrypted bytes are not an "
                                             r"ONNX model\)"):
        onnx_model.read_onnx_bytes(str(path), "wrong")


def test_truncated_onnx_is_refused(tmp_path, onnx_bytes):
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_bytes[: len(onnx_bytes) // 3])
    with pytest.raises(ModelFileError, match="is not an ONNX model"):
        onnx_model.read_onnx_bytes(str(path), None)
