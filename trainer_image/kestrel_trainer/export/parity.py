"""The check every export runs: the exported model against the Keras model on the same input batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kestrel_trainer.progress import Progress

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Parity:
    n_images: int
    max_abs_diff: float
    top1_agreement: float  # fraction of images whose top-1 class is the same
    source: str  # where the images came from

    def line(self) -> str:
        return (f"parity on {self.n_images} {self.source}: max |Keras - ONNX Runtime| = {self.max_abs_diff:.3g}, "
                f"top-1 agreement {self.top1_agreement:.4f}")


def compare(keras_scores: np.ndarray, onnx_scores: np.ndarray, source: str) -> Parity:
    keras_scores, onnx_scores = np.asarray(keras_scores, np.float64), np.asarray(onnx_scores, np.float64)
    if keras_scores.shape != onnx_scores.shape:
        raise ValueError(f"score shapes differ: {keras_scores.shape} vs {onnx_scores.shape}")
    agree = keras_scores.argmax(axis=1) == onnx_scores.argmax(axis=1)
    return Parity(len(keras_scores), float(np.abs(keras_scores - onnx_scores).max()), float(agree.mean()), source)


def check(model, onnx_bytes: bytes, batch_nhwc: np.ndarray, source: str) -> Parity:
    """Run both on `batch_nhwc` (preprocessed, channels last); the ONNX model gets it as NCHW."""
    from kestrel_trainer.export.runtime import OnnxClassifier

    with Progress(total=2, desc="parity check", unit="model") as bar:  # Keras, then ONNX Runtime
        keras_scores = model.predict(batch_nhwc, verbose=0, batch_size=len(batch_nhwc))
        bar.update(1)
        onnx_scores = OnnxClassifier(onnx_bytes, "the exported model").predict_batch(batch_nhwc)
        bar.update(1)
    return compare(keras_scores, onnx_scores, source)


def random_batch(n: int, height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """Standard-normal inputs (roughly the preprocessed range) when no real images are at hand."""
    return np.random.default_rng(seed).standard_normal((n, height, width, channels)).astype(np.float32)
