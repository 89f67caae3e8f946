"""The keep rule and the groups against an independent NumPy implementation written here (not imported)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kestrel_trainer.prune import rule


def ref_norms(kernel: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """Per-filter L2 norms, the slow way: one filter at a time."""
    if depthwise:
        return np.array([np.sqrt((kernel[:, :, c, :].astype(np.float64) ** 2).sum()) for c in range(kernel.shape[2])])
    return np.array([np.sqrt((kernel[..., f].astype(np.float64) ** 2).sum()) for f in range(kernel.shape[-1])])


def ref_normalize(s: np.ndarray, normalizer: str) -> np.ndarray:
    if normalizer == "max":
        return s / s.max()
    if normalizer == "L2":
        return s * len(s) / np.linalg.norm(s)
    return s


def ref_combine(stats: list[np.ndarray], criterion: str) -> np.ndarray:
    k = len(stats)
    out = []
    for c in range(len(stats[0])):
        vals = [s[c] for s in stats]
        out.append({"union": max(vals), "intersection": min(vals), "arithmetic_mean": sum(vals) / k,
                    "geometric_mean": float(np.prod(vals)) ** (1.0 / k)}[criterion])
    return np.array(out)


def ref_keep(scores: np.ndarray, threshold: float, min_filters: int, granularity: int) -> list[int]:
    n = len(scores)
    count = sum(1 for v in scores if v > threshold)
    count = max(count, min(min_filters, n))
    while count % granularity:
        count += 1
    count = min(count, n)
    ranked = sorted(range(n), key=lambda i: (-scores[i], i))
    return sorted(ranked[:count])


@pytest.mark.parametrize("normalizer", rule.NORMALIZERS)
@pytest.mark.parametrize("criterion", rule.CRITERIA)
def test_keep_indices_match_the_reference(normalizer, criterion):
    rng = np.random.default_rng(7)
    for trial in range(20):
        n = int(rng.integers(1, 70))
        kernels = [rng.normal(size=(3, 3, 4, n)) * rng.random(n) ** 3 for _ in range(int(rng.integers(1, 4)))]
        threshold = float(rng.choice([0.0, 0.1, 0.3, 0.5, 0.9, 1.0]))
        nf, g = int(rng.integers(1, 40)), int(rng.choice([1, 2, 8, 16]))
        ours = rule.keep_indices(rule.combine([rule.normalize(rule.filter_norms(k), normalizer) for k in kernels],
                                              criterion), threshold, nf, g)
        ref = ref_keep(ref_combine([ref_normalize(ref_norms(k), normalizer) for k in kernels], criterion),
                       threshold, nf, g)
        assert ours.tolist() == ref, (trial, n, threshold, nf, g)


def test_depthwise_norms_are_per_channel():
    k = np.random.default_rng(0).normal(size=(3, 3, 10, 1))
    np.testing.assert_allclose(rule.filter_norms(k, depthwise=True), ref_norms(k, depthwise=True))


def test_defaults_are_the_originals():
    assert rule.PruneOptions() == rule.PruneOptions("max", "union", 8, 0.1, 16)


@pytest.mark.parametrize("n,above,nf,g,expected", [
    (64, 0, 16, 8, 16),   # nothing above the threshold: the minimum
    (64, 17, 16, 8, 24),  # rounded up to the granularity
    (20, 17, 16, 8, 20),  # capped at the layer's width
    (10, 0, 16, 8, 10),   # a layer narrower than the minimum keeps everything
    (64, 33, 1, 1, 33),
])
def test_keep_count_by_hand(n, above, nf, g, expected):
    assert rule.keep_count(n, above, nf, g) == expected


def test_all_zero_layer_keeps_only_the_minimum():
    for normalizer in rule.NORMALIZERS:
        s = rule.normalize(np.zeros(32), normalizer)
        assert not np.isnan(s).any()
        assert rule.keep_indices(s, 0.1, 16, 8).tolist() == list(range(16))


def test_geometric_mean_of_a_zero_is_zero():
    out = rule.combine([np.array([0.0, 0.5]), np.array([0.9, 0.5])], "geometric_mean")
    assert out[0] == 0.0 and out[1] == pytest.approx(0.5)
    assert list(itertools.chain(rule.CRITERIA)) == ["union", "intersection", "arithmetic_mean", "geometric_mean"]
