"""Shared by evaluate and inference: load a model for prediction and run it over image files.

Preprocessing is exactly the validation path of the training pipeline (same resize, crop and
normalisation from the spec), so a model sees at inference what it saw when it was validated.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np

from kestrel_trainer.data import folders
from kestrel_trainer.errors import DataError
from kestrel_trainer.progress import progress
from kestrel_trainer.spec.types import ExperimentSpec

log = logging.getLogger("kestrel.predict")


def load_for_prediction(path: str, key: Optional[str]):
    """The model to predict with: a Keras model without its optimizer (no training state needed), or,
    for an exported .onnx / .etlt, an ONNX Runtime classifier with the same output_shape and predict."""
    from kestrel_trainer.export.onnx_model import is_deployed

    if not os.path.exists(path):
        raise DataError(f"model file not found: {path}")
    if is_deployed(path):
        from kestrel_trainer.export.runtime import load_classifier

        return load_classifier(path, key)
    from kestrel_trainer.model_io.files import load_model

    model = load_model(path, key, compile=False)
    model.source_path = path  # named in messages, as OnnxClassifier.path is
    return model


def default_classmap_path(model_path: str) -> Optional[str]:
    """classmap.json of the training run a model came from (RESULTS/weights/x.tlt -> RESULTS/classmap.json)."""
    folder = os.path.dirname(os.path.abspath(model_path))
    for candidate in (folder, os.path.dirname(folder)):
        path = os.path.join(candidate, folders.CLASSMAP_FILENAME)
        if os.path.exists(path):
            return path
    return None


def model_input_hwc(model) -> Optional[tuple[int, int, int]]:
    """(H, W, C) the model takes: an exported model's NCHW input, a Keras model's input shape; None if dynamic."""
    if hasattr(model, "input_chw"):
        c, h, w = model.input_chw
    else:
        shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
        h, w, c = shape[1:4]
    if not all(isinstance(d, int) and d > 0 for d in (h, w, c)):
        return None
    return int(h), int(w), int(c)


def spec_for_model(spec: ExperimentSpec, model) -> ExperimentSpec:
    """The spec with the input size the model file says, as the original's evaluate, inference and export take
    it (from the model, not from input_image_size); a spec that says otherwise gets a warning."""
    name = getattr(model, "path", None) or getattr(model, "source_path", None) or model.name
    return spec_with_input_size(spec, model_input_hwc(model), name)


def spec_with_input_size(spec: ExperimentSpec, hwc: Optional[tuple[int, int, int]], name: str) -> ExperimentSpec:
    if hwc is None or hwc == spec.model.input_shape:
        return spec
    h, w, c = hwc
    log.warning("%s takes %d,%d,%d images (C,H,W): using that, as the original does, not the spec's "
                "input_image_size %d,%d,%d", name, c, h, w, spec.model.input_channels,
                spec.model.input_height, spec.model.input_width)
    return replace(spec, model=replace(spec.model, input_height=h, input_width=w, input_channels=c))


def predict_files(
    model,
    files: Sequence[str],
    spec: ExperimentSpec,
    batch_size: int,
    center_crop: bool,
    n_workers: int,
    desc: str = "predict",
) -> np.ndarray:
    """Softmax scores [len(files), n_classes], in file order. Images are resized to the model's own input
    size (spec_for_model), as the original does; the rest of the preprocessing is the spec's."""
    from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset

    n_classes = int(model.output_shape[-1])
    spec = spec_for_model(spec, model)
    options = replace(PipelineOptions.for_evaluation(spec.model, spec.train, batch_size, center_crop),
                      n_workers=n_workers)
    ds = make_dataset(list(files), [0] * len(files), n_classes, options)
    ds = ds.map(lambda x, y: x)
    n_batches = -(-len(files) // max(1, options.batch_size))
    batches = (np.asarray(x) for x in progress(ds, total=n_batches, desc=desc, unit="batch"))
    if hasattr(model, "predict_batch"):  # an exported model (OnnxClassifier)
        parts = [model.predict_batch(x) for x in batches]
    else:  # Keras: one compiled call per batch, so the bar moves with the batches
        parts = [np.asarray(model.predict_on_batch(x)) for x in batches]
    if not parts:
        return np.zeros((0, n_classes), np.float64)
    return np.concatenate(parts).astype(np.float64)
