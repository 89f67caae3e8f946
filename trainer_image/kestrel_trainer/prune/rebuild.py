"""Kept indices for every group, then the smaller model: same graph and layer names, fewer filters.

The new model comes from the old one's config with `filters` / `units` / a Reshape's last axis changed,
so everything else (strides, activations, trainable flags, the model's name) is what it was. Weights
are the old arrays sliced on their output axis by the layer's own kept indices and on their input axis
by the kept indices of the tensor they read (Concatenate offsets and Flatten repeats included).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from kestrel_trainer.prune import rule
from kestrel_trainer.prune.graph import Layout, PruneGraph, layer_weights
from kestrel_trainer.prune.rule import PruneOptions

L = tf.keras.layers


def group_keep(graph: PruneGraph, opts: PruneOptions) -> dict[int, np.ndarray]:
    """{root group: kept indices}; pinned groups keep everything."""
    groups = graph.groups
    keep = {}
    for root in groups.roots():
        width = groups.width[root]
        members = groups.members.get(root, [])
        if groups.is_pinned(root) or not members:
            keep[root] = np.arange(width)
            continue
        scores = rule.combine([m.scores for m in members], opts.criterion)
        keep[root] = rule.keep_indices(scores, opts.threshold, opts.min_num_filters, opts.granularity)
    return keep


def layout_keep(layout: Layout, graph: PruneGraph, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Kept positions along a tensor's last axis."""
    parts, offset = [], 0
    for seg in layout.segments:
        parts.append(keep[graph.groups.find(seg.group)] + offset)
        offset += seg.width
    base = np.concatenate(parts) if parts else np.arange(0)
    if layout.repeat == 1:
        return base
    return np.concatenate([p * offset + base for p in range(layout.repeat)])


def _slice_weights(layer, weights: list[np.ndarray], in_idx, out_idx) -> list[np.ndarray]:
    kind = type(layer)
    if kind is L.Conv2D:
        kernel = weights[0][:, :, in_idx, :][..., out_idx]
        return [kernel, *(w[out_idx] for w in weights[1:])]
    if kind is L.Dense:
        kernel = weights[0][..., in_idx, :][..., out_idx]
        return [kernel, *(w[out_idx] for w in weights[1:])]
    if kind is L.DepthwiseConv2D:
        return [weights[0][:, :, out_idx, :], *(w[out_idx] for w in weights[1:])]
    if isinstance(layer, L.BatchNormalization):
        return [w[out_idx] for w in weights]
    return weights


def rebuild(model: tf.keras.Model, graph: PruneGraph, keep: dict[int, np.ndarray],
            weights: Optional[dict[str, list[np.ndarray]]] = None) -> tf.keras.Model:
    """The pruned model with the sliced weights (not compiled, no optimizer state)."""
    weights = layer_weights(model) if weights is None else weights
    out_keep = {name: layout_keep(lay, graph, keep) for name, lay in graph.outputs.items()}
    in_keep = {name: layout_keep(lay, graph, keep) for name, lay in graph.inputs.items()}
    config = model.get_config()
    for entry in config["layers"]:
        name = entry["config"]["name"]
        cfg = entry["config"]
        if entry["class_name"] == "Conv2D" and name in graph.prunable:
            cfg["filters"] = len(out_keep[name])
        elif entry["class_name"] == "Dense" and name in graph.prunable:
            cfg["units"] = len(out_keep[name])
        elif name in graph.reshapes:
            cfg["target_shape"] = [*cfg["target_shape"][:-1], len(out_keep[name])]
    pruned = tf.keras.Model.from_config(config)
    pairs = []
    for layer in pruned.layers:
        if not layer.weights:
            continue
        old = model.get_layer(layer.name)
        sliced = _slice_weights(old, weights[layer.name], in_keep.get(layer.name), out_keep.get(layer.name))
        for var, value in zip(layer.weights, sliced, strict=True):
            if tuple(var.shape) != value.shape:
                raise AssertionError(f"{layer.name}: sliced {value.shape}, rebuilt {tuple(var.shape)}")
            pairs.append((var, value))
    tf.keras.backend.batch_set_value(pairs)
    return pruned


def kept_per_layer(model: tf.keras.Model, graph: PruneGraph, keep: dict[int, np.ndarray]) -> list[dict]:
    """[{layer, type, kept, total, group}] for every Conv2D / Dense / DepthwiseConv2D, model order."""
    rows = []
    for name in graph.prunable:
        layout = graph.outputs[name]
        group_names = sorted({m for seg in layout.segments for m in graph.groups.member_layers(seg.group)})
        rows.append({
            "layer": name,
            "type": type(model.get_layer(name)).__name__,
            "kept": int(len(layout_keep(layout, graph, keep))),
            "total": int(layout.width),
            "pinned": any(graph.groups.is_pinned(seg.group) for seg in layout.segments),
            "group": group_names if len(group_names) > 1 else [],
        })
    return rows
