"""Image-folder scanning and classmaps: label order is a public contract (model outputs follow it)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from kestrel_trainer.data import folders
from kestrel_trainer.errors import DataError
from tests.data.helpers import make_folder, write_image


def test_classes_are_sorted_folder_names_and_labels_follow(tmp_path):
    root = str(tmp_path / "ds")
    make_folder(root, {"zebra": 2, "ant": 3, "Moth": 1})
    ds = folders.scan(root)
    assert ds.classes == ("Moth", "ant", "zebra")
    assert ds.counts() == {"Moth": 1, "ant": 3, "zebra": 2}
    for path, label in zip(ds.files, ds.labels, strict=True):
        assert os.path.basename(os.path.dirname(path)) == ds.classes[label]
    assert ds.classmap == {"Moth": 0, "ant": 1, "zebra": 2}


def test_all_extensions_in_any_case_and_subfolders_count_other_files_do_not(tmp_path):
    root = tmp_path / "ds"
    px = np.zeros((4, 4, 3), np.uint8)
    for name in ("a.jpg", "b.JPEG", "c.Png", "d.bmp", "sub/e.PNG"):
        write_image(str(root / "one" / name), px)
    (root / "one" / "notes.txt").write_text("not an image")
    (root / "one" / ".hidden.png").write_bytes(b"")
    write_image(str(root / "two" / "x.png"), px)
    (root / ".ipynb_checkpoints").mkdir()
    ds = folders.scan(str(root))
    assert ds.classes == ("one", "two")
    names = sorted(os.path.relpath(f, root / "one") for f in ds.files if ds.labels[ds.files.index(f)] == 0)
    assert names == ["a.jpg", "b.JPEG", "c.Png", "d.bmp", os.path.join("sub", "e.PNG")]


def test_empty_class_folder_is_named(tmp_path):
    root = tmp_path / "ds"
    make_folder(str(root), {"a": 1, "b": 1})
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no images.*empty"):
        folders.scan(str(root))


def test_missing_root_and_single_class_are_errors(tmp_path):
    with pytest.raises(DataError, match="not found: .*nowhere"):
        folders.scan(str(tmp_path / "nowhere"))
    make_folder(str(tmp_path / "one"), {"only": 2})
    with pytest.raises(DataError, match="at least 2 class"):
        folders.scan(str(tmp_path / "one"))


def test_classmap_fixes_order_and_must_match_folders(tmp_path):
    root = str(tmp_path / "ds")
    make_folder(root, {"a": 1, "b": 2, "c": 1})
    ds = folders.scan(root, classmap={"c": 0, "a": 1, "b": 2})
    assert ds.classes == ("c", "a", "b")
    assert [ds.classes[y] for y in ds.labels] == ["c", "a", "b", "b"]
    with pytest.raises(DataError, match="only in folders: c; only in classmap: d"):
        folders.scan(root, classmap={"a": 0, "b": 1, "d": 2})
    with pytest.raises(DataError, match="0..2"):
        folders.scan(root, classmap={"a": 0, "b": 1, "c": 3})


def test_train_and_val_must_have_the_same_classes(tmp_path):
    make_folder(str(tmp_path / "train"), {"a": 1, "b": 1, "c": 1})
    make_folder(str(tmp_path / "val"), {"a": 1, "b": 1, "d": 1})
    with pytest.raises(DataError, match="only in train: c; only in val: d"):
        folders.scan_train_val(str(tmp_path / "train"), str(tmp_path / "val"))
    train, val = folders.scan_train_val(str(tmp_path / "train"), str(tmp_path / "train"))
    assert train.classes == val.classes


def test_val_is_labelled_in_the_training_classmap_order(tmp_path):
    make_folder(str(tmp_path / "train"), {"a": 1, "b": 1, "c": 1})
    make_folder(str(tmp_path / "val"), {"a": 1, "b": 2, "c": 1})
    classmap = tmp_path / "classmap.json"
    classmap.write_text(json.dumps({"c": 0, "b": 1, "a": 2}))
    train, val = folders.scan_train_val(str(tmp_path / "train"), str(tmp_path / "val"), str(classmap))
    assert train.classes == val.classes == ("c", "b", "a")
    assert sorted(val.classes[y] for y in val.labels) == ["a", "b", "b", "c"]


def test_classmap_round_trip_and_bad_files(tmp_path):
    path = str(tmp_path / "classmap.json")
    folders.write_classmap(path, ["dog", "cat", "eel"])
    with open(path) as f:
        assert json.load(f) == {"dog": 0, "cat": 1, "eel": 2}
    assert folders.read_classmap(path) == {"dog": 0, "cat": 1, "eel": 2}
    with pytest.raises(DataError, match="classmap not found"):
        folders.read_classmap(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('["a", "b"]')
    with pytest.raises(DataError, match="bad.json"):
        folders.read_classmap(str(tmp_path / "bad.json"))
