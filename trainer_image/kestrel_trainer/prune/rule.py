"""The pruning rule as pure NumPy functions (no TensorFlow): what `kestrel prune` keeps and why.

Norms (Molchanov et al. 2016, the original's "min weight" method): the L2 norm of each output filter's
kernel, biases ignored; a depthwise convolution scores each of its channels. Scores are normalised
within their layer, the scores of layers tied into one equalization group are combined per channel,
and `keep_indices` applies the threshold, minimum, granularity and cap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kestrel_trainer.prune import CRITERIA, NORMALIZERS  # noqa: F401 - part of this module's API


@dataclass(frozen=True)
class PruneOptions:
    """The command's knobs, with the original's defaults."""

    normalizer: str = "max"
    criterion: str = "union"
    granularity: int = 8
    threshold: float = 0.1
    min_num_filters: int = 16


def filter_norms(kernel: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """L2 norm per output filter (last axis of a Conv2D/Dense kernel) or per channel (depthwise, axis 2)."""
    k = np.asarray(kernel, dtype=np.float64)
    if depthwise:  # (kh, kw, C, multiplier): one score per input channel
        return np.sqrt(np.sum(k**2, axis=(0, 1, 3)))
    return np.sqrt(np.sum(k**2, axis=tuple(range(k.ndim - 1))))


def normalize(scores: np.ndarray, normalizer: str) -> np.ndarray:
    """max: s / max(s); L2: s / ||s||_2 * len(s) (the original's formula); off: unchanged.

    A layer whose filters are all zero gets all-zero scores (instead of NaN), so only the minimum is kept.
    """
    s = np.asarray(scores, dtype=np.float64)
    if normalizer == "off":
        return s
    if normalizer == "max":
        denom = np.max(s) if s.size else 0.0
        return s / denom if denom > 0 else np.zeros_like(s)
    if normalizer == "L2":
        denom = np.sqrt(np.sum(s**2))
        return s / denom * len(s) if denom > 0 else np.zeros_like(s)
    raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")


def combine(stats: Sequence[np.ndarray], criterion: str) -> np.ndarray:
    """One score per channel for a group: union = max, intersection = min, arithmetic or geometric mean."""
    s = np.stack([np.asarray(x, dtype=np.float64) for x in stats])
    if criterion == "union":
        return s.max(axis=0)
    if criterion == "intersection":
        return s.min(axis=0)
    if criterion == "arithmetic_mean":
        return s.mean(axis=0)
    if criterion == "geometric_mean":
        with np.errstate(divide="ignore"):
            return np.exp(np.log(s).mean(axis=0))
    raise ValueError(f"equalization criterion must be one of {CRITERIA}, got {criterion!r}")


def keep_count(n_filters: int, n_above: int, min_num_filters: int, granularity: int) -> int:
    """max(n_above, min(min_num_filters, n_filters)), rounded up to a multiple of granularity, capped."""
    n = max(n_above, min(min_num_filters, n_filters))
    n = -(-n // granularity) * granularity
    return min(n, n_filters)


def keep_indices(scores: np.ndarray, threshold: float, min_num_filters: int, granularity: int) -> np.ndarray:
    """Indices (ascending) of the filters to keep: the top-n by score, n from `keep_count`.

    Ties are broken towards the lower index (a stable sort; the original's quicksort leaves them unspecified).
    """
    s = np.asarray(scores, dtype=np.float64)
    n = keep_count(len(s), int(np.count_nonzero(s > threshold)), min_num_filters, granularity)
    order = np.argsort(-s, kind="stable")
    return np.sort(order[:n])
