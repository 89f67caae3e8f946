"""labels.txt and nvinfer_config.txt for DeepStream's nvinfer, right for the spec's preprocessing.

nvinfer computes y = net-scale-factor * (x - offsets[c]) on the resized frame in model-color-format order.
The numbers come from data/transforms.preprocess_constants, the one place our preprocessing is defined:
offsets = the per-channel mean in the model's channel order, scale = 1/std. The original writes the
caffe numbers whatever the mode; we write the right ones. nvinfer has one scalar scale: torch mode as the
original (std .224 on every channel) is exact; with train_config.torch_std "per_channel" (.229/.224/.225) the
config uses the original's documented approximation 1/(0.224*255) for all three channels, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

COLOR_RGB, COLOR_BGR, COLOR_GRAY = 0, 1, 2
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
TORCH_SHARED_STD = 0.224  # the original's single torch std
KEY_PLACEHOLDER = "<your model key>"
LABELS_FILE = "labels.txt"
LABEL_SEPARATOR = ";"
CONFIG_FILE = "nvinfer_config.txt"


@dataclass(frozen=True)
class Normalisation:
    scale: float  # net-scale-factor
    offsets: tuple[float, ...]  # per channel, in model-color-format order
    color_format: int
    note: Optional[str] = None  # an approximation, written as a comment


def normalisation(mode: str, channels: int, image_mean: Optional[Mapping[str, float]] = None) -> Normalisation:
    from kestrel_trainer.data.transforms import preprocess_constants

    mean, std, to_bgr = preprocess_constants(mode, channels, image_mean)
    color = COLOR_GRAY if channels == 1 else (COLOR_BGR if to_bgr else COLOR_RGB)
    if len(set(std)) == 1:
        return Normalisation(1.0 / std[0], mean, color)
    shared = 255.0 * TORCH_SHARED_STD
    ratios = ", ".join(f"{shared / s:.4f}" for s in std)
    note = (f"{mode} mode divides each channel by its own std ({', '.join(f'{s / 255:.3f}' for s in std)}); "
            f"nvinfer has one scale, so this uses the original's 1/({TORCH_SHARED_STD}*255) for all channels: "
            f"the model sees channels scaled by {ratios} relative to training")
    return Normalisation(1.0 / shared, mean, color, note)


def labels_text(class_names: Sequence[str]) -> str:
    """nvinfer's labels file for a classifier: one line per output layer, that layer's labels separated by `;`
    (deepstream_tao_apps' classifier labels are written so). Our model has one output, so one line. The original
    writes one label per line, which nvinfer reads as one output layer per line: only class 0 gets a name.
    (Triton's one-label-per-line file is triton.labels_text.)"""
    from kestrel_trainer.export.onnx_model import ExportError

    for name in class_names:
        if LABEL_SEPARATOR in name or "\n" in name or "\r" in name:
            raise ExportError(f"class name {name!r} cannot go in DeepStream's labels file (nvinfer separates labels "
                              f"with {LABEL_SEPARATOR!r} and output layers with new lines): rename its folder")
    return LABEL_SEPARATOR.join(class_names) + "\n"


def config_text(*, model_file: str, encrypted: bool, norm: Normalisation, chw: tuple[int, int, int],
                n_classes: int, data_type: str, batch_size: int, cal_cache: Optional[str] = None,
                engine_file: Optional[str] = None) -> str:
    """nvinfer_config.txt; file names are written relative to the config's folder when they sit in it."""
    c, h, w = chw
    lines = ["# Written by kestrel export --gen_ds_config for DeepStream's Gst-nvinfer (network-type=1: classifier).",
             "[property]", "gpu-id=0"]
    if norm.note:
        lines.append(f"# {norm.note}")
    lines += [f"net-scale-factor={norm.scale:.10g}", f"offsets={';'.join(f'{o:.10g}' for o in norm.offsets)}",
              f"model-color-format={norm.color_format}", f"infer-dims={c};{h};{w}"]
    if encrypted:
        lines += [f"tlt-encoded-model={model_file}",
                  "# replace with the key the model was exported with (never written here)",
                  f"tlt-model-key={KEY_PLACEHOLDER}"]
    else:
        lines.append(f"onnx-file={model_file}")
    if engine_file:
        lines.append(f"model-engine-file={engine_file}")
    if data_type == "int8" and cal_cache:
        lines.append(f"int8-calib-file={cal_cache}")
    lines += [f"labelfile-path={LABELS_FILE}", f"batch-size={batch_size}",
              f"network-mode={NETWORK_MODE[data_type]}", "network-type=1", f"num-detected-classes={n_classes}",
              "output-blob-names=predictions", "maintain-aspect-ratio=0",
              "output-tensor-meta=0", "process-mode=1", "classifier-threshold=0.0"]
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> dict[str, str]:
    """key -> value of an nvinfer config (comments and section headers dropped)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out
