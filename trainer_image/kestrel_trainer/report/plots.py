"""PNG plots people look at: training curves and the confusion matrix (matplotlib, no display)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    """Render to memory, then write_atomic: a reader never sees half a PNG."""
    import io

    from kestrel_trainer.model_io.files import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_atomic(path, buf.getvalue())


def training_curves(rows: Sequence[dict], path: str) -> None:
    """Loss, accuracy and learning rate per epoch from training.csv rows."""
    plt = _pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, title) in zip(axes[:2], (("loss", "loss"), ("acc", "accuracy"))):
        ax.plot(epochs, [float(r[key]) for r in rows], marker="o", label=f"train {title}")
        if all(r.get(f"val_{key}") not in (None, "") for r in rows):
            ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], marker="o", label=f"validation {title}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].plot(epochs, [float(r["lr"]) for r in rows], marker="o", color="tab:green")
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str) -> None:
    """Counts with row-normalised colours; rows are true classes, columns predictions."""
    plt = _pyplot()
    n = len(class_names)
    size = max(5.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                        color="white" if normalised[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title("confusion matrix")
    _save(fig, path)
    plt.close(fig)
