"""Inference on one image or a folder: class and confidence, `result.csv` in the original's format.

Rows are `path,class_name,confidence` with no header (what the original writes and what existing
scripts parse); `--top_k K` appends `class_2,confidence_2,...` columns.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from typing import Optional, Sequence

import numpy as np

from kestrel_trainer.errors import DataError

log = logging.getLogger("kestrel.inference")
INFERENCE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def images_under(root: str) -> list[str]:
    """Every jpg/jpeg/png under `root` (recursive, any case), sorted for a stable row order."""
    if not os.path.isdir(root):
        raise DataError(f"image folder not found: {root}")
    found = []
    for folder, _dirs, names in os.walk(root):
        for name in names:
            if name.lower().endswith(INFERENCE_EXTENSIONS):
                found.append(os.path.join(folder, name))
    if not found:
        raise DataError(f"no images ({', '.join(INFERENCE_EXTENSIONS)}) under {root}")
    return sorted(found)


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


def class_names_from(classmap_path: str, n_outputs: int) -> list[str]:
    from kestrel_trainer.data import folders

    classmap = folders.read_classmap(classmap_path)
    names = list(folders.classes_from_classmap(classmap, source=classmap_path))
    if len(names) != n_outputs:
        raise DataError(f"{classmap_path} has {len(names)} classes but the model predicts {n_outputs}")
    return names


def run_inference(spec, model_path: str, key: Optional[str], classmap_path: Optional[str], *,
                  image: Optional[str] = None, folder: Optional[str] = None, batch_size: Optional[int] = None,
                  results_dir: Optional[str] = None, top_k: int = 1, skip_bad_images: bool = False
                  ) -> tuple[list[str], list[list[tuple[str, float]]]]:
    from kestrel_trainer.data.check import exclude_bad_images
    from kestrel_trainer.predict import default_classmap_path, load_for_prediction, predict_files

    if image:
        if not os.path.isfile(image):
            raise DataError(f"image not found: {image}")
        files = [image]
    else:
        files = images_under(folder)
    files, _, skipped = exclude_bad_images(files, [0] * len(files), skip_bad_images=skip_bad_images,
                                           n_workers=spec.eval.n_workers, log=log.warning)
    classmap_path = classmap_path or default_classmap_path(model_path)
    if not classmap_path:
        raise DataError(f"no classmap: pass -cm CLASSMAP (none found beside {model_path})")
    model = load_for_prediction(model_path, key)
    names = class_names_from(classmap_path, int(model.output_shape[-1]))
    scores = predict_files(model, files, spec, batch_size or spec.eval.batch_size, spec.eval.enable_center_crop,
                           spec.eval.n_workers)
    rows = top_k_rows(scores, names, top_k)
    if folder:
        out_dir = results_dir or folder
        os.makedirs(out_dir, exist_ok=True)
        write_result_csv(os.path.join(out_dir, "result.csv"), files, rows)
    if skipped:
        log.warning("%d undecodable image(s) skipped", skipped)
    return files, rows
