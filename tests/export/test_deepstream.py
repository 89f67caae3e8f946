"""DeepStream's nvinfer computes y = net-scale-factor * (x - offsets[c]) on frames in model-color-format order.
The numbers we write must reproduce our own preprocessing of a real image, for every mode, colour and grey."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kestrel_trainer.data.transforms import torch_mode
from kestrel_trainer.export import calibration, deepstream
from kestrel_trainer.inference import images_under
from kestrel_trainer.spec import load_spec
from tests.export.conftest import write_spec

SIZE = 32
CAFFE_MEAN = ('image_mean { key: "r" value: 120.5 } image_mean { key: "g" value: 110.25 } '
              'image_mean { key: "b" value: 99.0 }')


@pytest.fixture(scope="module")
def real_images(fashion, photo, tmp_path_factory):
    """A real photo and a real Fashion-MNIST image, stored at the model size so the pipeline only normalises."""
    folder = tmp_path_factory.mktemp("ds")
    colour = folder / "photo.png"
    Image.open(photo).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR).save(colour)
    grey = folder / "grey.png"
    Image.open(images_under(str(fashion / "test"))[0]).convert("L").resize((SIZE, SIZE), Image.BILINEAR).save(grey)
    return {3: colour, 1: grey}


def nvinfer(config: dict[str, str], image_path) -> np.ndarray:
    """What nvinfer feeds the network, from the config's numbers alone (HWC, channels in its colour format)."""
    fmt = int(config["model-color-format"])
    pixels = np.asarray(Image.open(image_path).convert("L" if fmt == 2 else "RGB"), np.float64)
    if fmt == 2:
        pixels = pixels[..., None]
    elif fmt == 1:
        pixels = pixels[..., ::-1]  # BGR
    offsets = np.array([float(v) for v in config["offsets"].split(";")])
    return (pixels - offsets) * float(config["net-scale-factor"])


@pytest.mark.parametrize("mode,channels,image_mean", [
    ("caffe", 3, ""), ("caffe", 3, CAFFE_MEAN), ("caffe", 1, ""), ("tf", 3, ""), ("tf", 1, ""),
    ("torch", 3, ""), ("torch", 1, ""), ("torch", 3, 'torch_std: "per_channel"'),
])
def test_config_numbers_reproduce_our_preprocessing(mode, channels, image_mean, real_images, fashion, tmp_path):
    """image_mean is any extra train_config line (the caffe mean, or torch_std)."""
    spec = load_spec(write_spec(tmp_path, fashion, c=channels, size=SIZE, mode=mode, image_mean=image_mean))
    ours = calibration.preprocessed([str(real_images[channels])], spec, 1)[0][0]
    per_channel = spec.train.torch_std == "per_channel"
    norm = deepstream.normalisation(torch_mode(mode, spec.train.torch_std), channels, spec.train.image_mean)
    text = deepstream.config_text(model_file="m.onnx", encrypted=False, norm=norm, chw=(channels, SIZE, SIZE),
                                  n_classes=10, data_type="fp32", batch_size=4)
    config = deepstream.parse_config(text)
    assert config["infer-dims"] == f"{channels};{SIZE};{SIZE}"
    assert config["model-color-format"] == {1: "2", 3: "1" if mode == "caffe" else "0"}[channels]
    theirs = nvinfer(config, real_images[channels])
    assert np.abs(ours).max() > 0.5  # a real image, not a flat one
    if per_channel:
        # one scalar scale: 1/(0.224*255) as the original documents; exact on G, R and B off by std ratios
        assert "one scale" in text and "0.224" in text
        np.testing.assert_allclose(theirs[..., 1], ours[..., 1], atol=1e-3)
        np.testing.assert_allclose(theirs[..., 0] * 0.224 / 0.229, ours[..., 0], atol=1e-3)
        np.testing.assert_allclose(theirs[..., 2] * 0.224 / 0.225, ours[..., 2], atol=1e-3)
    else:
        assert "#" not in text.split("[property]", 1)[1].split("net-scale-factor")[0]  # no approximation note
        np.testing.assert_allclose(theirs, ours, atol=1e-3)


def test_config_names_the_model_file_precision_and_classes():
    norm = deepstream.normalisation("caffe", 3)
    etlt = deepstream.parse_config(deepstream.config_text(
        model_file="m.etlt", encrypted=True, norm=norm, chw=(3, 224, 224), n_classes=7, data_type="int8",
        batch_size=16, cal_cache="cal.bin"))
    assert etlt["tlt-encoded-model"] == "m.etlt" and etlt["tlt-model-key"] == deepstream.KEY_PLACEHOLDER
    assert etlt["network-mode"] == "1" and etlt["int8-calib-file"] == "cal.bin"
    assert (etlt["network-type"], etlt["num-detected-classes"], etlt["batch-size"]) == ("1", "7", "16")
    assert etlt["offsets"] == "103.939;116.779;123.68" and float(etlt["net-scale-factor"]) == 1.0
    onnx_cfg = deepstream.parse_config(deepstream.config_text(
        model_file="m.onnx", encrypted=False, norm=norm, chw=(3, 224, 224), n_classes=7, data_type="fp16",
        batch_size=1))
    assert onnx_cfg["onnx-file"] == "m.onnx" and "tlt-model-key" not in onnx_cfg
    assert onnx_cfg["network-mode"] == "2" and "int8-calib-file" not in onnx_cfg


def nvinfer_labels(text: str) -> list[list[str]]:
    """The labels file as Gst-nvinfer parses it (NvDsInferContextImpl::parseLabelsFile): each non-empty line is
    one output layer's label list, split at ';'. A classifier's class c of output layer l is named labels[l][c]."""
    layers = []
    for line in text.split("\n"):
        if line:
            layers.append(line.split(";"))
    return layers


def test_labels_file_names_every_class_as_nvinfer_reads_it():
    names = [f"class {i}" for i in range(10)]
    text = deepstream.labels_text(names)
    layers = nvinfer_labels(text)
    assert len(layers) == 1  # one output layer: `predictions`
    assert [layers[0][c] for c in range(10)] == names  # every class index of that layer has its name


def test_a_class_name_nvinfer_would_split_is_refused():
    from kestrel_trainer.export.onnx_model import ExportError

    with pytest.raises(ExportError, match="cannot go in DeepStream's labels file"):
        deepstream.labels_text(["ok", "cats;dogs"])


def test_strict_type_constraints_and_the_fp16_fallback_of_int8_engines():
    """The builder flags as the original sets them, against TensorRT's documented BuilderFlag names (a stand-in
    module: TensorRT cannot be installed here)."""
    from types import SimpleNamespace

    from kestrel_trainer.export.tensorrt_engine import precision_flags

    flag = SimpleNamespace(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS",
                           STRICT_TYPES="STRICT_TYPES")
    trt10 = SimpleNamespace(BuilderFlag=SimpleNamespace(FP16="FP16", INT8="INT8",
                                                        OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS"))
    trt7 = SimpleNamespace(BuilderFlag=SimpleNamespace(FP16="FP16", INT8="INT8", STRICT_TYPES="STRICT_TYPES"))
    fast, slow = SimpleNamespace(platform_has_fast_fp16=True), SimpleNamespace(platform_has_fast_fp16=False)
    trt = SimpleNamespace(BuilderFlag=flag)
    assert precision_flags(trt, fast, "fp32") == []
    assert precision_flags(trt, fast, "fp16") == ["FP16"]
    assert precision_flags(trt, fast, "int8") == ["INT8", "FP16"]  # the original's FP16 fallback
    assert precision_flags(trt, slow, "int8") == ["INT8"]
    assert precision_flags(trt10, fast, "int8", strict=True) == ["INT8", "OBEY_PRECISION_CONSTRAINTS"]
    assert precision_flags(trt7, fast, "int8", strict=True) == ["INT8", "STRICT_TYPES"]
    assert precision_flags(trt10, fast, "fp16", strict=True) == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert precision_flags(trt10, fast, "fp32", strict=True) == []
