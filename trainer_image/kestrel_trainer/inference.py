"""Inference on one image or a folder: class and confidence, `result.csv` in the original's format.

Rows are `path,class_name,confidence` with no header (what the original writes and what existing
scripts parse); `--top_k K` appends `class_2,confidence_2,...` columns.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from kestrel_trainer.data.folders import class_names_from, images_under
from kestrel_trainer.errors import DataError

log = logging.getLogger("kestrel.inference")
def top_k_rows(scores: np.ndarray, class_names: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(class_names[j], float(scores[i, j])) for j in order[i]] for i in range(scores.shape[0])]


def write_result_csv(path: str, files: Sequence[str], rows: Sequence[Sequence[tuple[str, float]]]) -> None:
    from kestrel_trainer.model_io.files import write_atomic

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    for file, predictions in zip(files, rows):
        line = [file]
        for name, confidence in predictions:
            line += [name, f"{confidence:.6f}"]
        writer.writerow(line)
    write_atomic(path, buffer.getvalue().encode("utf-8"))


@dataclass
class InferenceResult:
    """What inference classified: `-i` (one image) and/or `-d` (a folder, written to `csv_path`)."""

    image: Optional[tuple[str, list[tuple[str, float]]]] = None
    folder_files: list[str] = field(default_factory=list)
    folder_rows: list[list[tuple[str, float]]] = field(default_factory=list)
    csv_path: Optional[str] = None


def run_inference(spec, model_path: str, key: Optional[str], classmap_path: Optional[str], *,
                  image: Optional[str] = None, folder: Optional[str] = None, batch_size: Optional[int] = None,
                  results_dir: Optional[str] = None, top_k: int = 1, skip_bad_images: bool = False
                  ) -> InferenceResult:
    """Classify `image` and/or every image under `folder` (both in one run, as the original), with one model
    load; the folder's rows go to result.csv in `results_dir` (default: the folder)."""
    from kestrel_trainer.data.check import exclude_bad_images
    from kestrel_trainer.predict import default_classmap_path, load_for_prediction, predict_files

    if image and not os.path.isfile(image):
        raise DataError(f"image not found: {image}")
    folder_files = images_under(folder) if folder else []
    # label 1 marks the -i image, 0 the folder's: the check keeps the labels of the files it keeps
    checked, tags, skipped = exclude_bad_images(([image] if image else []) + folder_files,
                                                [1] * bool(image) + [0] * len(folder_files),
                                                skip_bad_images=skip_bad_images, n_workers=spec.eval.n_workers,
                                                log=log.warning)
    classmap_path = classmap_path or default_classmap_path(model_path)
    if not classmap_path:
        raise DataError(f"no classmap: pass -cm CLASSMAP (none found beside {model_path})")
    model = load_for_prediction(model_path, key)
    names = class_names_from(classmap_path, int(model.output_shape[-1]))
    result = InferenceResult()
    if 1 in tags:
        scores = predict_files(model, [image], spec, 1, spec.eval.enable_center_crop, spec.eval.n_workers)
        result.image = (image, top_k_rows(scores, names, top_k)[0])
    if folder:
        result.folder_files = [f for f, tag in zip(checked, tags) if tag == 0]
        scores = predict_files(model, result.folder_files, spec, batch_size or 1, spec.eval.enable_center_crop,
                               spec.eval.n_workers, desc="inference")
        result.folder_rows = top_k_rows(scores, names, top_k)
        out_dir = results_dir or folder
        os.makedirs(out_dir, exist_ok=True)
        result.csv_path = os.path.join(out_dir, "result.csv")
        write_result_csv(result.csv_path, result.folder_files, result.folder_rows)
    if skipped:
        log.warning("%d undecodable image(s) skipped", skipped)
    return result
