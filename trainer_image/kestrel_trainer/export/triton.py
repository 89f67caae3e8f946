"""A Triton Inference Server model repository for the exported ONNX model (`export --triton_repository DIR`).

Layout (Triton's model repository): DIR/<name>/config.pbtxt, DIR/<name>/1/model.onnx (the plain ONNX: Triton
cannot read an .etlt), DIR/<name>/labels.txt with one label per line (Triton's label_filename format; DeepStream's
labels file is deepstream.labels_text). The config is for Triton's ONNX Runtime backend: input `input_1` FP32
NCHW [C, H, W] per request, output `predictions` [classes] with the labels, `max_batch_size` from
--max_batch_size and dynamic batching (Triton concatenates requests along the batch dimension, which the exported
model leaves dynamic). The tests validate the text against Triton's own protobuf (tritonclient's
model_config_pb2) and run the model as the backend feeds it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.onnx"
VERSION = "1"


def model_name(output: str) -> str:
    """The Triton model name (and folder): the export's output file name without its suffix."""
    return os.path.splitext(os.path.basename(output))[0]


def paths(repository: str, name: str) -> dict[str, str]:
    """{"config", "model", "labels"}: where each file of the model goes in the repository."""
    folder = os.path.join(repository, name)
    return {"config": os.path.join(folder, CONFIG_FILE), "model": os.path.join(folder, VERSION, MODEL_FILE),
            "labels": os.path.join(folder, LABELS_FILE)}


def labels_text(class_names: Sequence[str]) -> str:
    return "".join(f"{name}\n" for name in class_names)


def config_text(*, name: str, input_name: str, output_name: str, chw: tuple[int, int, int], n_classes: int,
                max_batch_size: int) -> str:
    """config.pbtxt (protobuf text format of Triton's inference.ModelConfig)."""
    c, h, w = chw
    return f"""# Written by kestrel export --triton_repository for Triton's ONNX Runtime backend.
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input_name}"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ {c}, {h}, {w} ]
  }}
]
output [
  {{
    name: "{output_name}"
    data_type: TYPE_FP32
    dims: [ {n_classes} ]
    label_filename: "{LABELS_FILE}"
  }}
]
dynamic_batching {{ }}
"""
