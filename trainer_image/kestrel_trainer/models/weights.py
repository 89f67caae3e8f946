"""Pretrained weights: copy layer by layer by name, and adopt pruned models with their own shapes.

Sources are our model files (encrypted or not, through model_io) and plain Keras `.hdf5` files, whole
models or weights only (e.g. `tf.keras.applications` ImageNet weights: mobilenet and efficientnet use
Keras' layer names). Reading goes straight to the HDF5 groups, so a file whose architecture cannot be
rebuilt still gives its weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import tensorflow as tf

from kestrel_trainer.errors import ModelFileError
from kestrel_trainer.model_io.files import PathLike, layer_weights, load_model
from kestrel_trainer.models.layers import HEAD_DTYPE
from kestrel_trainer.spec.types import ModelSpec

log = logging.getLogger(__name__)

# Classifier layers whose shape depends on the class count.
HEAD_LAYERS = frozenset({"predictions", "conv10", "conv_head"})


@dataclass
class LoadReport:
    """What load_pretrained_weights did, layer by layer (the trainer logs the summary)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name: reason"
    missing: list[str] = field(default_factory=list)  # our layers with weights the file does not have
    unused: list[str] = field(default_factory=list)  # file layers we have no layer for
    rebuilt_from_file: bool = False  # True when a pruned model from the file replaced ours

    def summary(self) -> str:
        msg = (f"pretrained {self.source}: {len(self.loaded)} layers loaded, {len(self.skipped)} skipped, "
               f"{len(self.missing)} not in file, {len(self.unused)} unused")
        return msg + (" (pruned model: using its architecture)" if self.rebuilt_from_file else "")


def read_layer_weights(path: PathLike, key: Optional[str] = None) -> dict[str, list[np.ndarray]]:
    """{layer name: [arrays in layer.weights order]} from a model or weights-only HDF5 (ours or Keras')."""
    return layer_weights(path, key)  # model_io reads every format and converts channels-first files


def load_pretrained_weights(model: tf.keras.Model, path: PathLike, key: Optional[str] = None) -> LoadReport:
    """Copy weights into `model` for every layer whose name and weight shapes match the file.

    A layer with other shapes (a head with another class count, a grayscale first conv from an RGB
    file) keeps its fresh initialisation and gets a log line.
    """
    source = read_layer_weights(path, key)
    report = LoadReport(source=str(path))
    seen = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        arrays = source.get(layer.name)
        if arrays is None and layer.name == "predictions":
            # the original's vgg and alexnet name their family head's softmax layer so (templates/vgg.py,
            # templates/alexnet.py:174)
            for theirs in ("output_fc", "head_fc8"):
                arrays = source.get(theirs)
                if arrays is not None:
                    seen.add(theirs)
                    break
        if arrays is None:
            report.missing.append(layer.name)
            continue
        seen.add(layer.name)
        want = [tuple(w.shape) for w in layer.weights]
        have = [a.shape for a in arrays]
        if want != have:
            reason = f"{layer.name}: shapes {have} in file, {want} in model"
            log.info("pretrained: skipping layer %s", reason)
            report.skipped.append(reason)
            continue
        layer.set_weights(arrays)
        report.loaded.append(layer.name)
    report.unused = sorted(set(source) - seen)
    log.info(report.summary())
    return report


def _out_channels(layer: tf.keras.layers.Layer) -> Optional[int]:
    """Output width of a weighted layer (what pruning shrinks); None for other layers."""
    if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
        return int(layer.weights[0].shape[-2])
    if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)):
        return int(layer.weights[0].shape[-1])
    if isinstance(layer, tf.keras.layers.BatchNormalization):
        return int(layer.weights[0].shape[-1])
    return None


def is_pruned_relative_to(file_model: tf.keras.Model, model: tf.keras.Model) -> bool:
    """True when a same-named, non-head layer of the file has fewer or more output channels than ours."""
    ours = {layer.name: layer for layer in model.layers}
    for layer in file_model.layers:
        if layer.name in HEAD_LAYERS or not layer.weights or layer.name not in ours:
            continue
        a, b = _out_channels(layer), _out_channels(ours[layer.name])
        if a is not None and b is not None and a != b:
            return True
    return False


def replace_head(model: tf.keras.Model, n_classes: int) -> tf.keras.Model:
    """A copy of `model` sharing all layers but a fresh Dense `predictions` for `n_classes`."""
    head = model.get_layer("predictions")
    if not isinstance(head, tf.keras.layers.Dense):
        raise ModelFileError(
            f"the model's head ({type(head).__name__} 'predictions') cannot be resized to {n_classes} classes; "
            "train the pruned model with its original class count or use the default head (retain_head: false)"
        )
    out = tf.keras.layers.Dense(n_classes, activation="softmax", name="predictions", dtype=HEAD_DTYPE)(head.input)
    return tf.keras.Model(model.inputs, out, name=model.name)


def rebuild_if_pruned(model: tf.keras.Model, spec: ModelSpec, n_classes: int, path: PathLike,
                      key: Optional[str] = None) -> tuple[tf.keras.Model, Optional[LoadReport]]:
    """If the file holds a pruned version of `model`, return the file's model (its own smaller layers,
    weights kept, a new head when the class count differs, the spec's freezing applied) and a report;
    otherwise return `model` unchanged and None.
    """
    from kestrel_trainer.models.builder import finalize
    from kestrel_trainer.models.registry import get_entry

    try:
        file_model = load_model(path, key, compile=False)
    except ModelFileError as err:
        if "weights only" in err.message or "corrupt file" in err.message:
            # A weights-only HDF5 has no architecture: it cannot be a pruned model we could adopt.
            read_layer_weights(path, key)  # re-raises for a really corrupt file
            return model, None
        raise
    if not is_pruned_relative_to(file_model, model):
        return model, None
    log.info("pretrained model %s is pruned: training it with its own architecture", path)
    if tuple(file_model.input_shape[1:]) != tuple(model.input_shape[1:]):
        raise ModelFileError(
            f"pruned model {path} takes input {file_model.input_shape[1:]}, the spec says {model.input_shape[1:]}"
        )
    if int(file_model.output_shape[-1]) != n_classes:
        log.info("pruned model has %d classes, the data %d: new `predictions` layer",
                 file_model.output_shape[-1], n_classes)
        file_model = replace_head(file_model, n_classes)
    file_model = finalize(file_model, spec, get_entry(spec.arch).block_of)
    report = LoadReport(source=str(path), loaded=[layer.name for layer in file_model.layers if layer.weights],
                        rebuilt_from_file=True)
    return file_model, report


def build_with_pretrained(spec: ModelSpec, n_classes: int, path: Optional[PathLike],
                          key: Optional[str] = None) -> tuple[tf.keras.Model, Optional[LoadReport]]:
    """create_model + (pruned-model adoption or by-name weight loading) when `path` is set."""
    from kestrel_trainer.models.registry import create_model

    model = create_model(spec, n_classes)
    if not path:
        return model, None
    adopted, report = rebuild_if_pruned(model, spec, n_classes, path, key)
    if report is not None:
        log.info(report.summary())
        return adopted, report
    return model, load_pretrained_weights(model, path, key)
