"""Evaluate a model on a labelled image folder: loss, top-k, per-class metrics, confusion matrix.

Metrics are computed from the prediction matrix with NumPy (checked against scikit-learn in the
tests), in the classmap's order, so a custom classmap orders the confusion matrix too (the
original ignores it there).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np

log = logging.getLogger("kestrel.evaluate")


def classification_metrics(
    scores: np.ndarray, labels: Sequence[int], class_names: Sequence[str], top_k: int
) -> dict[str, Any]:
    """Everything evaluate reports, from softmax scores [N, C] and integer labels [N]."""
    y = np.asarray(labels, dtype=np.int64)
    n, c = scores.shape
    pred = scores.argmax(axis=1)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(scores[np.arange(n), y], eps, 1.0))))
    k = min(top_k, c)
    # a label counts as in the top k when fewer than k classes score strictly higher (ties favour the label)
    higher = (scores > scores[np.arange(n), y][:, None]).sum(axis=1)
    top_k_acc = float(np.mean(higher < k))
    matrix = np.zeros((c, c), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(c), where=(precision + recall) > 0)
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(class_names)
    }
    weights = support / max(support.sum(), 1)
    return {
        "n_images": int(n),
        "loss": loss,
        "top_1_accuracy": float(np.mean(pred == y)),
        f"top_{k}_accuracy": top_k_acc,
        "top_k": k,
        "per_class": per_class,
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean()),
                      "support": int(support.sum())},
        "weighted_avg": {"precision": float((precision * weights).sum()), "recall": float((recall * weights).sum()),
                         "f1": float((f1 * weights).sum()), "support": int(support.sum())},
        "classes": list(class_names),
        "confusion_matrix": matrix.tolist(),
    }


def format_report(metrics: dict[str, Any]) -> str:
    """The text a person reads: summary, per-class table, confusion matrix."""
    names = metrics["classes"]
    width = max(12, max(len(n) for n in names) + 2)
    k = metrics["top_k"]
    lines = [
        f"images: {metrics['n_images']}  loss: {metrics['loss']:.4f}  top-1 accuracy: "
        f"{metrics['top_1_accuracy']:.4f}  top-{k} accuracy: {metrics[f'top_{k}_accuracy']:.4f}",
        "",
        f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    rows = [(n, metrics["per_class"][n]) for n in names]
    rows += [("macro avg", metrics["macro_avg"]), ("weighted avg", metrics["weighted_avg"])]
    for name, m in rows:
        lines.append(f"{name:<{width}}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>10d}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max(6, max(len(str(v)) for row in metrics["confusion_matrix"] for v in row) + 1)
    lines.append(" " * width + "".join(f"{i:>{cell}d}" for i in range(len(names))))
    for i, (name, row) in enumerate(zip(names, metrics["confusion_matrix"])):
        lines.append(f"{f'{i} {name}':<{width}}" + "".join(f"{v:>{cell}d}" for v in row))
    return "\n".join(lines)


def classification_report_text(metrics: dict[str, Any], digits: int = 2) -> str:
    """The per-class table in scikit-learn's `classification_report` layout, which the original prints."""
    names = metrics["classes"]
    width = max(max(len(n) for n in names), len("weighted avg"), digits)
    head = "{:>{width}s} " + " {:>9}" * 4
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    text = head.format("", "precision", "recall", "f1-score", "support", width=width) + "\n\n"
    for name in names:
        m = metrics["per_class"][name]
        text += row.format(name, m["precision"], m["recall"], m["f1"], m["support"], width=width, digits=digits)
    total = metrics["macro_avg"]["support"]
    text += "\n" + ("{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n").format(
        "accuracy", "", "", metrics["top_1_accuracy"], total, width=width, digits=digits)
    for heading, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        m = metrics[key]
        text += row.format(heading, m["precision"], m["recall"], m["f1"], total, width=width, digits=digits)
    return text


def format_original_report(metrics: dict[str, Any]) -> str:
    """The lines the original's evaluate prints, for scripts that parse them (our table follows)."""
    k = metrics["top_k"]
    return "\n".join([
        f"Evaluation Loss: {metrics['loss']}",
        f"Evaluation Top K accuracy: {metrics[f'top_{k}_accuracy']}",
        "Confusion Matrix",
        str(np.asarray(metrics["confusion_matrix"])),
        "Classification Report",
        classification_report_text(metrics),
    ])


def default_results_dir(model_path: str) -> str:
    """Where evaluate writes without -r: RUN/evaluate beside the model's RUN/weights/ folder."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(model_path))), "evaluate")


def writable_results_dir(model_path: str) -> Optional[str]:
    """Where evaluate writes without -r: RUN/evaluate beside the model when that can be written, else
    `evaluate/` in the working directory (a model on a read-only mount), else None: nothing is written and the
    report is only printed, which is all the original does without -r."""
    import tempfile

    for folder in (default_results_dir(model_path), os.path.join(os.getcwd(), "evaluate")):
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
            return folder
        except OSError as err:
            log.info("cannot write evaluation results to %s (%s)", folder, err.strerror or err)
    return None


def run_evaluation(spec, model_path: str, key: Optional[str], results_dir: Optional[str],
                   classmap_path: Optional[str] = None, skip_bad_images: bool = False) -> dict[str, Any]:
    """Evaluate `model_path` on eval_config.eval_dataset_path; writes results.json and confusion_matrix.png."""
    from kestrel_trainer.data import folders
    from kestrel_trainer.data.check import exclude_bad_images
    from kestrel_trainer.errors import DataError
    from kestrel_trainer.model_io.files import write_json_atomic
    from kestrel_trainer.predict import default_classmap_path, load_for_prediction, predict_files
    from kestrel_trainer.report.plots import confusion_matrix

    classmap_path = classmap_path or default_classmap_path(model_path)
    classmap = folders.read_classmap(classmap_path) if classmap_path else None
    data = folders.scan(spec.eval.eval_dataset_path, classmap)
    files, labels, skipped = exclude_bad_images(data.files, data.labels, skip_bad_images=skip_bad_images,
                                                n_workers=spec.eval.n_workers, log=log.warning)
    model = load_for_prediction(model_path, key)
    n_out = int(model.output_shape[-1])
    if n_out != data.n_classes:
        raise DataError(f"{model_path} predicts {n_out} classes but {data.root} has {data.n_classes}")
    scores = predict_files(model, files, spec, spec.eval.batch_size, spec.eval.enable_center_crop,
                           spec.eval.n_workers, desc="evaluate")
    metrics = classification_metrics(scores, labels, data.classes, spec.eval.top_k)
    metrics.update({"model": os.path.abspath(model_path), "dataset": data.root, "classmap": classmap_path,
                    "skipped_bad_images": skipped})
    if results_dir:
        os.makedirs(results_dir, exist_ok=True)
        write_json_atomic(os.path.join(results_dir, "results.json"), metrics)
        confusion_matrix(np.asarray(metrics["confusion_matrix"]), data.classes,
                         os.path.join(results_dir, "confusion_matrix.png"))
        with open(os.path.join(results_dir, "results.txt"), "w", encoding="utf-8") as fh:
            fh.write(format_report(metrics) + "\n")
    return metrics


def dumps(metrics: dict[str, Any]) -> str:
    return json.dumps(metrics, indent=2)
