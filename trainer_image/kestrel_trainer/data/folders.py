"""Image-folder datasets: `root/<class_name>/<images>` and the classmap that fixes label order.

A class's label is its index in the sorted list of class folder names unless a classmap
(`{"name": index}`) is given, in which case the classmap decides, so a model trained with one
classmap keeps its output order on a dataset whose folders sort differently. Everything here is
plain file-system work (no TensorFlow) and raises DataError with the offending path for user mistakes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from kestrel_trainer.errors import DataError

# Lower-case; matching is case-insensitive so photo.JPG and scan.PNG count too.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
CLASSMAP_FILENAME = "classmap.json"


@dataclass(frozen=True)
class ImageFolder:
    """A scanned dataset: `files[i]` (absolute path) has label `labels[i]`, an index into `classes`."""

    root: str
    classes: tuple[str, ...]
    files: tuple[str, ...]
    labels: tuple[int, ...]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def classmap(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def counts(self) -> dict[str, int]:
        """Images per class, in label order."""
        out = dict.fromkeys(self.classes, 0)
        for label in self.labels:
            out[self.classes[label]] += 1
        return out


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def class_folder_names(root: str) -> list[str]:
    """Sorted names of the class folders under `root` (hidden folders such as .ipynb_checkpoints skipped)."""
    if not os.path.isdir(root):
        raise DataError(f"dataset folder not found: {root}")
    return sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _images_under(folder: str) -> list[str]:
    """Images in a class folder, recursing into sub-folders (as Keras' flow_from_directory does), sorted.

    A training dataset staged lazily from object storage (storage.input_path(lazy=True)) holds only the files
    fetched so far; the ones its listing has and no rank has fetched yet count too (storage.pending_under), so
    every rank scans the same file list and reads (fetches) only its shard.
    """
    from kestrel_trainer.storage import pending_under

    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    base = os.path.abspath(folder)
    for path in pending_under(base):
        parts = os.path.relpath(path, base).split(os.sep)
        if is_image_file(parts[-1]) and not any(p.startswith(".") for p in parts[:-1]):
            found.append(os.path.join(folder, *parts))
    return sorted(set(found))


def classes_from_classmap(classmap: Mapping[str, int], source: str = "classmap") -> tuple[str, ...]:
    """Class names in label order; the indices must be exactly 0..N-1 (a gap would leave a dead output)."""
    indices = sorted(classmap.values())
    if indices != list(range(len(classmap))):
        raise DataError(f"{source}: class indices must be 0..{len(classmap) - 1} with no gaps or repeats, "
                        f"got {indices}")
    return tuple(sorted(classmap, key=lambda name: classmap[name]))


def _difference_message(what: str, a_name: str, a: set[str], b_name: str, b: set[str]) -> str:
    parts = []
    if a - b:
        parts.append(f"only in {a_name}: {', '.join(sorted(a - b))}")
    if b - a:
        parts.append(f"only in {b_name}: {', '.join(sorted(b - a))}")
    return f"{what} differ ({'; '.join(parts)})"


def scan(root: str, classmap: Optional[Mapping[str, int]] = None) -> ImageFolder:
    """Scan `root/<class>/<images>` into an ImageFolder.

    Classes are the sorted folder names, or the classmap's order when one is given (then the folders
    must be exactly the classmap's classes). Errors: missing root, fewer than two classes, a class
    folder without images (named), folders not matching the classmap (differences listed).
    """
    root = os.path.abspath(root)
    folders = class_folder_names(root)
    if classmap is not None:
        classes = classes_from_classmap(classmap)
        if set(classes) != set(folders):
            raise DataError(f"{root}: " + _difference_message(
                "class folders and classmap", "folders", set(folders), "classmap", set(classes)))
    else:
        classes = tuple(folders)
    if len(classes) < 2:
        raise DataError(f"{root}: need at least 2 class folders, found {len(classes)}"
                        + (f" ({classes[0]})" if classes else ""))
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        images = _images_under(os.path.join(root, name))
        if not images:
            raise DataError(f"class folder has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                            f"{os.path.join(root, name)}")
        files.extend(images)
        labels.extend([label] * len(images))
    return ImageFolder(root=root, classes=classes, files=tuple(files), labels=tuple(labels))


def scan_train_val(train_root: str, val_root: str, classmap_path: Optional[str] = None
                   ) -> tuple[ImageFolder, ImageFolder]:
    """Both folders of a training run, val labelled in train's order (a given classmap fixes that order).

    Class sets are compared before val is scanned with train's classmap, so a mismatch reads as train vs
    val (which is what the user got wrong), not as val vs classmap.
    """
    classmap = read_classmap(classmap_path) if classmap_path else None
    train = scan(train_root, classmap)
    val_classes = set(class_folder_names(os.path.abspath(val_root)))
    if val_classes != set(train.classes):
        raise DataError(_difference_message(
            f"classes of {train.root} and {os.path.abspath(val_root)}", "train", set(train.classes), "val",
            val_classes))
    return train, scan(val_root, train.classmap)


def read_classmap(path: str) -> dict[str, int]:
    """Read `{"name": index}`; errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError(f"classmap not found: {path}") from None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable JSON classmap ({err})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise DataError(f'{path}: a classmap is a JSON object {{"class_name": index}} with integer indices')
    classes_from_classmap(data, source=path)
    return data


def write_classmap(path: str, classes: Sequence[str]) -> None:
    """Write `{"name": index}` in label order, atomically (a crash never leaves half a file)."""
    from kestrel_trainer.model_io.files import write_atomic  # lazy: keeps `kestrel dataset ...` light

    data = {name: i for i, name in enumerate(classes)}
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


INFERENCE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def images_under(root: str) -> list[str]:
    """Every jpg/jpeg/png under `root` (recursive, any case), sorted for a stable row order: the images to run a
    model on (inference, export checks and calibration), unlike a class folder's (scan)."""
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


def class_names_from(classmap_path: str, n_outputs: int) -> list[str]:
    """Class names in label order from a classmap.json, which must name as many classes as the model has outputs."""
    classmap = read_classmap(classmap_path)
    names = list(classes_from_classmap(classmap, source=classmap_path))
    if len(names) != n_outputs:
        raise DataError(f"{classmap_path} has {len(names)} classes but the model predicts {n_outputs}")
    return names
