"""Keras -> ONNX for the architectures users deploy most: the graph DeepStream expects, and the same
scores as Keras on real preprocessed images."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from kestrel_trainer.export import calibration, onnx_model
from kestrel_trainer.export.runtime import OnnxClassifier
from kestrel_trainer.inference import images_under
from kestrel_trainer.spec import load_spec
from tests.export.conftest import arch_model, tiny_model, write_spec


@pytest.fixture(scope="module")
def real_batch(fashion, tmp_path_factory):
    """16 real test images, preprocessed by a torch-mode 1x32x32 spec (channels last, as Keras takes them)."""
    spec = load_spec(write_spec(tmp_path_factory.mktemp("spec"), fashion))
    files = images_under(str(fashion / "test"))[::2][:16]
    return np.concatenate(calibration.preprocessed(files, spec, 16))


@pytest.mark.slow
@pytest.mark.parametrize("arch,n_layers", [("resnet", 10), ("mobilenet_v2", None), ("efficientnet_b0", None)])
def test_export_matches_keras_on_real_images(arch, n_layers, real_batch):
    model = arch_model(arch, n_layers, inputs=real_batch)
    proto = onnx_model.keras_to_onnx(model)  # runs onnx.checker (full check) itself
    onnx.checker.check_model(proto, full_check=True)
    graph = proto.graph
    assert [i.name for i in graph.input] == ["input_1"]
    assert [o.name for o in graph.output] == ["predictions"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 32, 32]  # NCHW, dynamic N
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 13
    # no Reshape that keeps its input's shape is left between Conv and BN (it would stop BN folding)
    inferred = onnx.shape_inference.infer_shapes(proto)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim][1:] for v in inferred.graph.value_info}
    for node in proto.graph.node:
        if node.op_type == "Reshape" and node.input[0] in dims and node.output[0] in dims:
            assert dims[node.input[0]] != dims[node.output[0]], node.name

    keras_scores = model.predict(real_batch, verbose=0)
    assert keras_scores.argmax(1).min() != keras_scores.argmax(1).max(), "the batch must not be degenerate"
    onnx_scores = OnnxClassifier(proto.SerializeToString(), arch).predict(real_batch)
    # float32 in both, summed in another order (oneDNN's kernels vs ONNX Runtime's, and their thread split): MobileNet
    # V2's deep depthwise stack has differed by up to 1.2e-4 in a probability under load, ResNet by ~2e-5
    assert np.abs(onnx_scores - keras_scores).max() <= 3e-4
    np.testing.assert_array_equal(onnx_scores.argmax(1), keras_scores.argmax(1))
    np.testing.assert_allclose(onnx_scores.sum(1), 1.0, atol=1e-5)  # the softmax is in the graph


def test_static_batch_fixes_the_first_dimension_and_still_serves_any_count(real_batch):
    model = tiny_model()
    proto = onnx_model.keras_to_onnx(model, opset=13, static_batch=4)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 1, 32, 32]
    assert onnx_model.static_batch_of(proto) == 4
    scores = OnnxClassifier(proto.SerializeToString(), "static").predict(real_batch[:7])  # padded to 2 x 4
    np.testing.assert_allclose(scores, model.predict(real_batch[:7], verbose=0), atol=1e-5)


def test_unsupported_opset_is_refused_before_converting():
    with pytest.raises(onnx_model.ExportError, match="--target_opset 11: supported opsets are 12..18"):
        onnx_model.check_opset(11)
