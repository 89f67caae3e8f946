"""Shared by evaluate and inference: load a model for prediction and run it over image files.

Preprocessing is exactly the validation path of the training pipeline (same resize, crop and
normalisation from the spec), so a model sees at inference what it saw when it was validated.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np

from kestrel_trainer.data import folders
from kestrel_trainer.errors import DataError
from kestrel_trainer.spec.types import ExperimentSpec


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

    return load_model(path, key, compile=False)


def default_classmap_path(model_path: str) -> Optional[str]:
    """classmap.json of the training run a model came from (RESULTS/weights/x.tlt -> RESULTS/classmap.json)."""
    folder = os.path.dirname(os.path.abspath(model_path))
    for candidate in (folder, os.path.dirname(folder)):
        path = os.path.join(candidate, folders.CLASSMAP_FILENAME)
        if os.path.exists(path):
            return path
    return None


def predict_files(
    model,
    files: Sequence[str],
    spec: ExperimentSpec,
    batch_size: int,
    center_crop: bool,
    n_workers: int,
) -> np.ndarray:
    """Softmax scores [len(files), n_classes], in file order."""
    from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset

    n_classes = int(model.output_shape[-1])
    if hasattr(model, "check_input"):  # an exported model has a fixed input: say so before decoding images
        model.check_input(spec.model.input_height, spec.model.input_width, spec.model.input_channels)
    options = replace(PipelineOptions.for_evaluation(spec.model, spec.train, batch_size, center_crop),
                      n_workers=n_workers)
    ds = make_dataset(list(files), [0] * len(files), n_classes, options)
    ds = ds.map(lambda x, y: x)
    scores = model.predict(ds, verbose=0)
    return np.asarray(scores, dtype=np.float64)
