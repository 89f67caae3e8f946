"""Sizing a model without data: parameters, multiply-adds per image, layers grouped by freeze block.

MACs are counted from layer shapes (Conv2D: H_out*W_out*C_out*k_h*k_w*C_in/groups; DepthwiseConv2D:
H_out*W_out*C_out*k_h*k_w; Dense: inputs*units). FLOPs = 2 * MACs, the convention of the papers'
"FLOPs" tables is MACs, so both are printed. BN, activations, pooling and adds are not counted.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf


def layer_macs(layer: tf.keras.layers.Layer) -> int:
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
        _, h, w, c = layer.output_shape
        kh, kw = layer.kernel_size
        return int(h * w * c * kh * kw)
    if isinstance(layer, tf.keras.layers.Conv2D):
        _, h, w, c = layer.output_shape
        kh, kw = layer.kernel_size
        cin = int(layer.input_shape[-1]) // max(1, getattr(layer, "groups", 1))
        return int(h * w * c * kh * kw * cin)
    if isinstance(layer, tf.keras.layers.Dense):
        return int(np.prod(layer.input_shape[1:])) * int(layer.units)
    return 0


def count_macs(model: tf.keras.Model) -> int:
    return sum(layer_macs(layer) for layer in model.layers)


def param_counts(model: tf.keras.Model) -> tuple[int, int]:
    """(total, trainable). BN moving statistics are in total, not in trainable."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    return total, trainable


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def describe(model: tf.keras.Model, block_of: Callable[[str], Optional[int]], verbose: bool = True) -> str:
    """The text of `kestrel model info`."""
    lines = []
    total, trainable = param_counts(model)
    macs = count_macs(model)
    if verbose:
        current = object()
        fmt = "  {:<34} {:<22} {:<20} {:>12} {:>10}"
        lines.append(fmt.format("layer", "type", "output (H, W, C)", "params", "MACs"))
        for layer in model.layers:
            block = block_of(layer.name)
            if block != current:
                current = block
                lines.append(f"block {block}:" if block is not None else "(not in a freeze block):")
            params = layer.count_params()
            out = layer.output_shape
            out = out[0] if isinstance(out, list) else out
            lines.append(fmt.format(layer.name, type(layer).__name__, str(tuple(out[1:])), f"{params:,}",
                                    _human(layer_macs(layer)) if layer_macs(layer) else "",
                                    ) + ("" if layer.trainable or not layer.weights else "  frozen"))
    lines += [
        f"input shape (H, W, C): {tuple(model.input_shape[1:])}",
        f"output shape: {tuple(model.output_shape[1:])}",
        f"parameters: {total:,} total, {trainable:,} trainable, {total - trainable:,} non-trainable",
        f"compute per image: {macs:,} multiply-adds (MACs) = {2 * macs:,} FLOPs ({_human(2 * macs)}FLOPs)",
    ]
    return "\n".join(lines)
