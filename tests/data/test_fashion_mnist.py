"""The real Fashion-MNIST from the Debian package: split sizes, class balance, pixel-exact PNGs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from kestrel_trainer.cli.main import main
from kestrel_trainer.data import folders
from kestrel_trainer.data.datasets import fashion_mnist as fm
from kestrel_trainer.errors import DataError

pytestmark = pytest.mark.skipif(not os.path.isdir(fm.DEFAULT_SOURCE),
                                reason=f"needs the Debian package: {fm.INSTALL_HINT}")


@pytest.fixture(scope="module")
def official():
    return fm.load()


def test_official_arrays(official):
    assert official["train_images"].shape == (60000, 28, 28)
    assert official["test_images"].shape == (10000, 28, 28)
    assert np.bincount(official["train_labels"]).tolist() == [6000] * 10


def test_val_is_a_seeded_class_balanced_tenth(official):
    labels = official["train_labels"]
    train, val = fm.split_indices(labels, seed=0)
    assert len(train) == 54000 and len(val) == 6000
    assert np.bincount(labels[val]).tolist() == [600] * 10
    assert not set(train) & set(val) and len(set(train) | set(val)) == 60000
    again, _ = fm.split_indices(labels, seed=0)
    other, _ = fm.split_indices(labels, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_cli_import_per_class_writes_readable_exact_folders(tmp_path, official, capsys):
    out = tmp_path / "fm"
    assert main(["dataset", "import", "fashion-mnist", "--out", str(out), "--per-class", "5", "--seed", "3"]) == 0
    assert "wrote 150 images" in capsys.readouterr().out
    splits = {s: folders.scan(str(out / s)) for s in fm.SPLITS}
    for split in splits.values():
        assert split.classes == tuple(sorted(fm.CLASS_NAMES))
        assert list(split.counts().values()) == [5] * 10
    with open(out / "classmap.json") as f:
        assert json.load(f) == {name: i for i, name in enumerate(fm.CLASS_NAMES)}
    assert "T-shirt_top" in splits["train"].classes and "Ankle_boot" in splits["train"].classes
    train_names = {os.path.basename(p) for p in splits["train"].files}
    assert not train_names & {os.path.basename(p) for p in splits["val"].files}
    for split, source in (("train", "train"), ("val", "train"), ("test", "test")):
        for path in splits[split].files[::7]:
            index = int(os.path.basename(path).split("_")[1].split(".")[0])
            with Image.open(path) as im:
                assert im.mode == "L"
                np.testing.assert_array_equal(np.asarray(im), official[f"{source}_images"][index])
            assert fm.CLASS_NAMES[official[f"{source}_labels"][index]] == os.path.basename(os.path.dirname(path))
    # the official label order is kept when the written classmap is used
    mapped = folders.scan(str(out / "test"), classmap=folders.read_classmap(str(out / "classmap.json")))
    assert mapped.classes == fm.CLASS_NAMES
    # never overwrites an existing import
    assert main(["dataset", "import", "fashion-mnist", "--out", str(out), "--per-class", "1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_missing_package_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fm.import_fashion_mnist(str(tmp_path / "out"), source=str(tmp_path / "nothing"))
    assert not (tmp_path / "out" / "train").exists()


def test_stats_counts_sizes_modes_and_warns_on_imbalance(tmp_path, capsys):
    from tests.data.helpers import make_folder

    make_folder(str(tmp_path / "ds"), {"many": 7, "few": 2}, size=(6, 9))
    assert main(["dataset", "stats", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "9 images in 2 classes" in out and "9x6 (9)" in out and "RGB (9)" in out
    assert "warning: class imbalance: many has 7 images, few has 2" in out
