"""Channels-first (NCHW) Keras models, as the original writes them, rebuilt channels-last (NHWC).

TensorFlow 2.15 cannot run NCHW convolutions on a CPU, and Kestrel trains NHWC. A model file from the
original (every one of them is channels-first) is therefore rebuilt from its own architecture with the
layout switched, keeping every layer name, and given its own weights. Convolution kernels are stored
(kh, kw, in, out) in both layouts and batch-norm vectors are per channel, so they copy unchanged; what
changes is the order of the values a `Flatten` produces. A Flatten that was configured channels-first
already flattened in (H, W, C) order (Keras transposes before flattening), so nothing moves. One that was
not flattened an NCHW tensor in (C, H, W) order: the rows of the Dense layer fed by it are permuted to
(H, W, C). The converted model computes what the original did on the same image (transposed to NHWC).

Pure translation of the architecture (a config dict) plus one weight permutation; files.py does the I/O.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from kestrel_trainer.errors import ModelFileError

# Layers that only pass values through unchanged in shape: a Flatten's consumer is looked for past them.
_PASS_THROUGH = frozenset({"Dropout", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax"})
# Layers whose configuration holds shapes or code we cannot rewrite safely.
_REFUSED = frozenset({"Reshape", "Permute", "Lambda", "RepeatVector", "TFOpLambda", "SlicingOpLambda"})


def _layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    inner = config.get("config", {})
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    if not isinstance(layers, list):
        raise ModelFileError("model file: unexpected architecture layout (no layer list)")
    return layers


def is_channels_first(config: dict[str, Any]) -> bool:
    """True when any layer of the architecture is configured channels_first."""
    return any(layer.get("config", {}).get("data_format") == "channels_first" for layer in _layers(config))


def _inbound(layer: dict[str, Any]) -> list[str]:
    names = []
    for node in layer.get("inbound_nodes", []):
        items = node.get("args", []) if isinstance(node, dict) else node
        for item in items:
            if isinstance(item, (list, tuple)) and item and isinstance(item[0], str):
                names.append(item[0])
    return names


def to_channels_last(config: dict[str, Any], source: str = "model file") -> tuple[dict[str, Any], dict[str, str]]:
    """The NHWC version of an NCHW architecture, and {dense layer: flatten layer} whose rows must be permuted.

    Raises ModelFileError naming the layer when the architecture holds something that cannot be rewritten.
    """
    out = copy.deepcopy(config)
    layers = _layers(out)
    chw_flattens = []
    for layer in layers:
        kind, cfg, name = layer.get("class_name"), layer.get("config", {}), layer.get("config", {}).get("name")
        if kind in _REFUSED or kind in ("Model", "Functional", "Sequential"):
            raise ModelFileError(f"{source}: layer {name!r} ({kind}) of a channels-first model cannot be converted "
                                 "to channels-last")
        if kind == "Flatten":
            if cfg.get("data_format") != "channels_first":
                chw_flattens.append(name)  # it flattened (C, H, W)
            cfg["data_format"] = "channels_last"
        elif cfg.get("data_format") == "channels_first":
            cfg["data_format"] = "channels_last"
        if kind == "InputLayer":
            shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
            if shape is not None and len(shape) == 4:
                key = "batch_input_shape" if "batch_input_shape" in cfg else "batch_shape"
                cfg[key] = [shape[0], shape[2], shape[3], shape[1]]
        if kind in ("BatchNormalization", "Concatenate"):
            axis = cfg.get("axis")
            if axis in (1, [1]):
                cfg["axis"] = -1 if kind == "Concatenate" or axis == 1 else [-1]
        shape = cfg.get("batch_input_shape")
        if kind != "InputLayer" and shape is not None and len(shape) == 4:
            # Sequential models keep the input shape on their first layer
            cfg["batch_input_shape"] = [shape[0], shape[2], shape[3], shape[1]]
    consumers: dict[str, list[dict[str, Any]]] = {}
    for layer in layers:
        for parent in _inbound(layer):
            consumers.setdefault(parent, []).append(layer)
    permute: dict[str, str] = {}
    for flatten in chw_flattens:
        todo = list(consumers.get(flatten, []))
        while todo:
            layer = todo.pop()
            kind, name = layer.get("class_name"), layer["config"].get("name")
            if kind in _PASS_THROUGH:
                todo.extend(consumers.get(name, []))
            elif kind == "Dense":
                permute[name] = flatten
            else:
                raise ModelFileError(f"{source}: layer {name!r} ({kind}) after the channels-first Flatten "
                                     f"{flatten!r} cannot be converted to channels-last")
    return out, permute


def chw_rows_to_hwc(kernel: np.ndarray, chw: tuple[int, int, int]) -> np.ndarray:
    """A Dense kernel whose rows follow a (C, H, W) flatten, reordered for an (H, W, C) flatten."""
    c, h, w = chw
    if kernel.shape[0] != c * h * w:
        raise ModelFileError(f"Dense kernel has {kernel.shape[0]} rows, the flatten gives {c}x{h}x{w}")
    return kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)


_SPATIAL = frozenset({
    "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Flatten",
})


def to_channels_first(config: dict[str, Any], source: str = "model") -> dict[str, Any]:
    """The NCHW version of an NHWC architecture, as the original's files are (the weights copy unchanged:
    its Flatten layers are made channels-first, which flattens in (H, W, C) order as before)."""
    out = copy.deepcopy(config)
    for layer in _layers(out):
        kind, cfg = layer.get("class_name"), layer.get("config", {})
        if kind in _REFUSED or kind in ("Model", "Functional", "Sequential"):
            raise ModelFileError(f"{source}: layer {cfg.get('name')!r} ({kind}) cannot be converted to channels-first")
        if kind in _SPATIAL:
            cfg["data_format"] = "channels_first"
        if kind in ("BatchNormalization", "Concatenate"):
            axis = cfg.get("axis")
            if axis in (-1, 3, [-1], [3]):
                cfg["axis"] = [1] if isinstance(axis, list) else 1
        for key in ("batch_input_shape", "batch_shape"):
            shape = cfg.get(key)
            if shape is not None and len(shape) == 4:
                cfg[key] = [shape[0], shape[3], shape[1], shape[2]]
    return out


def channels_first_copy(model):
    """A channels-first copy of a Keras model with the same layer names and weights (for the original's
    files). Only built, never run: TensorFlow cannot execute NCHW convolutions on a CPU."""
    import tensorflow as tf

    nchw = tf.keras.models.model_from_config(to_channels_first(
        {"class_name": model.__class__.__name__, "config": model.get_config()}, model.name))
    for layer in nchw.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return nchw
