"""`export --triton_repository`: the config is checked against Triton's own model-config protobuf
(tritonclient.grpc.model_config_pb2, parsed strictly: an unknown field or enum value fails), the repository
layout is Triton's, and the model runs in ONNX Runtime the way Triton's ONNX Runtime backend feeds it: requests of
[C, H, W] images in the config's data type, concatenated along the batch dimension by the dynamic batcher, the
output read by the config's name and split back per request, labels from label_filename by index."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from kestrel_trainer.cli.main import main
from tests.export.conftest import classmap_names, real_test_batch
from tests.export.test_deepstream import nvinfer_labels

NUMPY_OF_TRITON = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT8": np.int8, "TYPE_UINT8": np.uint8}
ONNX_OF_TRITON = {"TYPE_FP32": onnx.TensorProto.FLOAT, "TYPE_FP16": onnx.TensorProto.FLOAT16}


@pytest.fixture(scope="module")
def exported(spread_run, tmp_path_factory):
    """A 10-class model exported with a DeepStream config and a Triton repository."""
    out = tmp_path_factory.mktemp("triton")
    run, spec = spread_run
    rc = main(["export", "-m", str(run), "-o", str(out / "deploy" / "fashion.onnx"), "-e", str(spec),
               "--gen_ds_config", "--triton_repository", str(out / "models"), "--max_batch_size", "8"])
    assert rc == 0
    return out, spec, run


def model_config(path):
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)  # strict: unknown fields and enum names are errors
    return config, model_config_pb2


def test_repository_layout_and_config_are_tritons(exported, fashion):
    out, _, _ = exported
    model = out / "models" / "fashion"
    assert sorted(str(p.relative_to(model)) for p in model.rglob("*") if p.is_file()) == [
        "1/model.onnx", "config.pbtxt", "labels.txt"]
    config, pb = model_config(model / "config.pbtxt")
    assert config.name == "fashion" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    (inp,) = config.input
    assert (inp.name, inp.data_type, inp.format, list(inp.dims)) == (
        "input_1", pb.TYPE_FP32, pb.ModelInput.FORMAT_NCHW, [1, 32, 32])
    (output,) = config.output
    assert (output.name, output.data_type, list(output.dims)) == ("predictions", pb.TYPE_FP32, [10])
    # Triton's label file: one label per line, by class index (DeepStream's is one ';' line)
    labels = (model / output.label_filename).read_text().splitlines()
    assert labels == classmap_names(fashion)
    assert nvinfer_labels((out / "deploy" / "labels.txt").read_text()) == [labels]
    # the ONNX model is the export's own output, unencrypted
    assert (model / "1" / "model.onnx").read_bytes() == (out / "deploy" / "fashion.onnx").read_bytes()


def test_model_matches_its_config_as_the_onnxruntime_backend_checks(exported):
    """The backend's checks: each config input/output exists in the model with the same data type, and the
    model's shape is [-1 (batch), *dims] when max_batch_size > 0; FORMAT_NCHW has exactly 3 dims."""
    out, _, _ = exported
    model = out / "models" / "fashion"
    config, pb = model_config(model / "config.pbtxt")
    proto = onnx.load(str(model / "1" / "model.onnx"))
    tensors = {v.name: v for v in (*proto.graph.input, *proto.graph.output)}
    for item in (*config.input, *config.output):
        value = tensors[item.name]
        assert value.type.tensor_type.elem_type == ONNX_OF_TRITON[pb.DataType.Name(item.data_type)]
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch, which Triton's batcher fills
        assert [d.dim_value for d in dims[1:]] == list(item.dims)
    assert len(config.input[0].dims) == 3


def test_batched_requests_give_the_keras_models_classes(exported, fashion):
    import tensorflow as tf

    out, spec_path, run = exported
    model = out / "models" / "fashion"
    config, pb = model_config(model / "config.pbtxt")
    labels = (model / config.output[0].label_filename).read_text().splitlines()
    nhwc = real_test_batch(fashion, spec_path)
    keras = tf.keras.models.load_model(run, compile=False).predict(nhwc, verbose=0)

    # clients send one [C, H, W] image per request in the config's data type; the batcher stacks up to
    # max_batch_size of them and the backend runs them as one [n, C, H, W] tensor
    inp, output = config.input[0], config.output[0]
    dtype = NUMPY_OF_TRITON[pb.DataType.Name(inp.data_type)]
    requests = [np.ascontiguousarray(image.transpose(2, 0, 1), dtype=dtype) for image in nhwc]
    assert all(list(r.shape) == list(inp.dims) for r in requests)
    session = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = []
    for start in range(0, len(requests), config.max_batch_size):
        batch = np.stack(requests[start:start + config.max_batch_size])
        (result,) = session.run([output.name], {inp.name: batch})
        assert result.shape == (len(batch), *output.dims)
        scores += list(result)  # split back per request
    scores = np.asarray(scores)
    assert np.abs(scores - keras).max() <= 1e-4
    assert [labels[i] for i in scores.argmax(1)] == [labels[i] for i in keras.argmax(1)]
    assert len(set(scores.argmax(1))) > 1
