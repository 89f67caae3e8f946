"""Which channels must be pruned together: one walk over a Keras functional model.

Every tensor's last axis is described by a `Layout`: a list of segments, each a run of channels that
belongs to one *group* (a union-find set of channel spaces that must keep identical indices), repeated
`repeat` times when a Flatten laid H*W positions of them side by side. The walk, in model order:

- Conv2D / Dense start a new group (their output filters) and consume their input's layout.
- DepthwiseConv2D passes its input's layout through and scores each channel into those groups (it is
  tied to its producer).
- BatchNormalization, activations, pooling, padding, dropout, global pooling pass the layout through.
- Add / Subtract / Multiply / Average / Maximum / Minimum unite their inputs' groups segment by segment
  (an input one channel wide broadcasts and is left out, as in the original).
- Concatenate on the channel axis lays its inputs' segments end to end (the offsets).
- Flatten multiplies `repeat` by H*W; a Reshape that only adds or drops unit axes passes through.
- Anything else (a TFOpLambda slice, Permute, a layer we do not know) pins every group it reads and
  starts a pinned group: those channels are kept whole, so the layer's own config stays valid.
- The model's outputs, the model's input and the user's excluded layers pin their groups.

The result says, for every weighted layer, which groups its input and output channels come from;
rebuild.py turns that into kept indices and sliced weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import tensorflow as tf

from kestrel_trainer.prune import rule

L = tf.keras.layers

PASS_THROUGH = (
    L.BatchNormalization, L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Softmax, L.ThresholdedReLU,
    L.Dropout, L.SpatialDropout2D, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
    L.MaxPooling2D, L.AveragePooling2D, L.GlobalAveragePooling2D, L.GlobalMaxPooling2D,
    L.ZeroPadding2D, L.Cropping2D, L.UpSampling2D,
)
ELEMENTWISE = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)


@dataclass(frozen=True)
class Segment:
    group: int
    width: int


@dataclass(frozen=True)
class Layout:
    """The last axis of a tensor: `segments` end to end, the whole repeated `repeat` times (position-major)."""

    segments: tuple[Segment, ...]
    repeat: int = 1

    @property
    def width(self) -> int:
        return sum(s.width for s in self.segments)


@dataclass
class Member:
    """A layer whose filters (or depthwise channels) score a group; `scores` already normalised in its layer."""

    layer: str
    scores: np.ndarray


@dataclass
class Groups:
    """Union-find over channel spaces of equal width."""

    parent: list[int] = field(default_factory=list)
    width: list[int] = field(default_factory=list)
    members: dict[int, list[Member]] = field(default_factory=dict)
    pinned: dict[int, list[str]] = field(default_factory=dict)  # root -> reasons

    def new(self, width: int) -> int:
        self.parent.append(len(self.parent))
        self.width.append(width)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.width[ra] != self.width[rb]:  # cannot happen for a model Keras built; pin rather than guess
            self.pin(ra, "channel widths differ")
            self.pin(rb, "channel widths differ")
            return
        self.parent[rb] = ra
        self.members.setdefault(ra, []).extend(self.members.pop(rb, []))
        reasons = self.pinned.pop(rb, None)
        if reasons:
            self.pinned.setdefault(ra, []).extend(reasons)

    def pin(self, g: int, reason: str) -> None:
        self.pinned.setdefault(self.find(g), []).append(reason)

    def add_member(self, g: int, member: Member) -> None:
        self.members.setdefault(self.find(g), []).append(member)

    def is_pinned(self, g: int) -> bool:
        return bool(self.pinned.get(self.find(g)))

    def roots(self) -> list[int]:
        return sorted({self.find(g) for g in range(len(self.parent))})

    def member_layers(self, g: int) -> list[str]:
        return [m.layer for m in self.members.get(self.find(g), [])]


@dataclass
class PruneGraph:
    """The walk's result: groups, and for each weighted layer the layouts of its input and output."""

    groups: Groups
    inputs: dict[str, Layout]  # layer name -> layout of its (single) input
    outputs: dict[str, Layout]  # layer name -> layout of its output
    prunable: list[str]  # Conv2D / Dense / DepthwiseConv2D layers, model order
    reshapes: list[str]  # Reshape layers whose target_shape's last axis follows the channels

    def layer_groups(self, name: str) -> list[int]:
        return sorted({self.groups.find(s.group) for s in self.outputs[name].segments})


def _inbound_layouts(layer, layouts: dict[tuple[str, int], Layout]) -> list[Layout]:
    node = layer._inbound_nodes[0]
    tensors = tf.nest.flatten(node.keras_inputs)
    result = []
    for t in tensors:
        src, _, index = t._keras_history
        result.append(layouts[(src.name, index)])
    return result


def _last_dim(shape) -> int:
    return int(shape[-1])


def _output_shapes(layer) -> list[tuple]:
    return [tuple(t.shape) for t in tf.nest.flatten(layer.output)]


def _channel_axis_is_last(axis, rank: int) -> bool:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] % rank == rank - 1


def _passes_through(layer, ins: list[Layout]) -> bool:
    if not isinstance(layer, PASS_THROUGH) or len(ins) != 1 or ins[0].repeat != 1:
        return False
    return not isinstance(layer, L.BatchNormalization) or _channel_axis_is_last(layer.axis, len(layer.input_shape))


def _concatenates_channels(layer, ins: list[Layout]) -> bool:
    return (isinstance(layer, L.Concatenate) and all(i.repeat == 1 for i in ins)
            and _channel_axis_is_last(layer.axis, len(_output_shapes(layer)[0])))


def _is_unit_reshape(layer, inp: Layout) -> bool:
    """A Reshape that keeps the channel axis last and only adds or drops axes of size 1."""
    in_shape, out_shape = layer.input_shape, layer.output_shape
    if inp.repeat != 1 or in_shape[-1] != out_shape[-1]:
        return False
    return int(np.prod(in_shape[1:-1], dtype=np.int64)) == int(np.prod(out_shape[1:-1], dtype=np.int64)) == 1


def layer_weights(model: tf.keras.Model) -> dict[str, list[np.ndarray]]:
    """{layer name: its weights as arrays}, read in one batch (per-layer get_weights is much slower)."""
    layers = [layer for layer in model.layers if layer.weights]
    values = tf.keras.backend.batch_get_value([w for layer in layers for w in layer.weights])
    out, i = {}, 0
    for layer in layers:
        out[layer.name] = values[i:i + len(layer.weights)]
        i += len(layer.weights)
    return out


def build_graph(model: tf.keras.Model, normalizer: str, excluded: frozenset[str] = frozenset(),
                weights: Optional[dict[str, list[np.ndarray]]] = None) -> PruneGraph:
    """Walk `model` once (see the module docstring). `excluded` names must exist (run.py checks)."""
    weights = layer_weights(model) if weights is None else weights
    groups = Groups()
    layouts: dict[tuple[str, int], Layout] = {}
    g = PruneGraph(groups, {}, {}, [], [])

    def fresh(width: int, reason: Optional[str] = None) -> Layout:
        gid = groups.new(width)
        if reason:
            groups.pin(gid, reason)
        return Layout((Segment(gid, width),))

    def pin_layout(layout: Layout, reason: str) -> None:
        for seg in layout.segments:
            groups.pin(seg.group, reason)

    for layer in model.layers:
        name = layer.name
        if isinstance(layer, L.InputLayer):
            out = fresh(_last_dim(_output_shapes(layer)[0]), "model input")
            layouts[(name, 0)] = out
            g.outputs[name] = out
            continue
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            # Every rule here reads channels on the last axis; a channels_first graph would be misread.
            raise ValueError(f"layer {name} is channels_first; only channels_last models can be pruned")
        if len(layer._inbound_nodes) != 1:
            raise ValueError(f"layer {name} is used {len(layer._inbound_nodes)} times (shared layers cannot be "
                             "pruned)")
        ins = _inbound_layouts(layer, layouts)
        kind = type(layer)
        out: Optional[Layout] = None
        if kind is L.Conv2D and layer.groups == 1 or kind is L.Dense:
            g.inputs[name] = ins[0]
            kernel = weights[name][0]
            out = fresh(int(kernel.shape[-1]))
            groups.add_member(out.segments[0].group, Member(name, rule.normalize(rule.filter_norms(kernel),
                                                                                  normalizer)))
            g.prunable.append(name)
        elif kind is L.DepthwiseConv2D and layer.depth_multiplier == 1 and ins[0].repeat == 1:
            g.inputs[name] = ins[0]
            out = ins[0]
            scores = rule.normalize(rule.filter_norms(weights[name][0], depthwise=True), normalizer)
            offset = 0
            for seg in out.segments:
                groups.add_member(seg.group, Member(name, scores[offset:offset + seg.width]))
                offset += seg.width
            g.prunable.append(name)
        elif _passes_through(layer, ins):
            out = ins[0]
        elif isinstance(layer, ELEMENTWISE):
            out = _unite(groups, ins, name)
        elif _concatenates_channels(layer, ins):
            out = Layout(tuple(seg for i in ins for seg in i.segments))
        elif isinstance(layer, L.Flatten) and len(ins) == 1:
            spatial = int(np.prod(layer.input_shape[1:-1], dtype=np.int64)) if len(layer.input_shape) > 2 else 1
            out = Layout(ins[0].segments, ins[0].repeat * spatial)
        elif isinstance(layer, L.Reshape) and len(ins) == 1 and _is_unit_reshape(layer, ins[0]):
            out = ins[0]
            g.reshapes.append(name)
        if out is None:
            # Unknown to the walk: keep everything it reads, and what it produces is whole.
            for i in ins:
                pin_layout(i, f"read by {name} ({kind.__name__})")
            for index, shape in enumerate(_output_shapes(layer)):
                layouts[(name, index)] = fresh(_last_dim(shape), f"produced by {name} ({kind.__name__})")
            g.outputs[name] = layouts[(name, 0)]
            if layer.weights:
                g.inputs[name] = ins[0] if len(ins) == 1 else Layout(())
        else:
            layouts[(name, 0)] = out
            g.outputs[name] = out
        if name in excluded:
            pin_layout(g.outputs[name], f"excluded ({name})")

    for t in tf.nest.flatten(model.outputs):
        src, _, index = t._keras_history
        pin_layout(layouts[(src.name, index)], f"model output ({src.name})")
    return g


def _unite(groups: Groups, ins: list[Layout], name: str) -> Layout:
    """Element-wise merge: the same channel of every input is one channel; unite their groups."""
    full = [i for i in ins if i.width != 1] or ins[:1]  # width-1 inputs broadcast
    first = full[0]
    same_shape = all(i.repeat == first.repeat and [s.width for s in i.segments] == [s.width for s in first.segments]
                     for i in full)
    if not same_shape:
        for i in full:
            for seg in i.segments:
                groups.pin(seg.group, f"merged by {name} with another channel layout")
        return first
    for other in full[1:]:
        for a, b in zip(first.segments, other.segments, strict=True):
            groups.union(a.group, b.group)
    return first
