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


def group_scores(graph: PruneGraph, criterion: str) -> dict[int, np.ndarray]:
    """{root group: combined normalised score per channel} for every group that may be pruned."""
    groups = graph.groups
    return {root: rule.combine([m.scores for m in groups.members[root]], criterion) for root in groups.roots()
            if groups.members.get(root) and not groups.is_pinned(root)}


def group_keep(graph: PruneGraph, opts: PruneOptions) -> dict[int, np.ndarray]:
    """{root group: kept indices}; pinned groups keep everything."""
    scores = group_scores(graph, opts.criterion)
    keep = {}
    for root in graph.groups.roots():
        if root in scores:
            keep[root] = rule.keep_indices(scores[root], opts.threshold, opts.min_num_filters, opts.granularity)
        else:
            keep[root] = np.arange(graph.groups.width[root])
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


def kept_per_layer(model: tf.keras.Model, graph: PruneGraph, keep: dict[int, np.ndarray],
                   criterion: str = "union") -> list[dict]:
    """[{layer, type, kept, total, pinned, group, score_min, score_median}] for every Conv2D / Dense /
    DepthwiseConv2D in model order; the scores are its group's combined normalised scores (None if kept whole)."""
    scores = group_scores(graph, criterion)
    rows = []
    for name in graph.prunable:
        layout = graph.outputs[name]
        own = [scores[r] for r in {graph.groups.find(seg.group) for seg in layout.segments} if r in scores]
        own_scores = np.concatenate(own) if own else None
        group_names = sorted({m for seg in layout.segments for m in graph.groups.member_layers(seg.group)})
        rows.append({
            "layer": name,
            "type": type(model.get_layer(name)).__name__,
            "kept": int(len(layout_keep(layout, graph, keep))),
            "total": int(layout.width),
            "pinned": any(graph.groups.is_pinned(seg.group) for seg in layout.segments),
            "group": group_names if len(group_names) > 1 else [],
            "score_min": None if own_scores is None else round(float(own_scores.min()), 4),
            "score_median": None if own_scores is None else round(float(np.median(own_scores)), 4),
        })
    return rows
