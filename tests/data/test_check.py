"""Corrupt images are found up front, by path, and never silently dropped."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from kestrel_trainer.cli.main import main
from kestrel_trainer.data import check, folders
from kestrel_trainer.errors import DataError
from tests.data.helpers import make_folder


@pytest.fixture
def broken(tmp_path):
    root = tmp_path / "ds"
    make_folder(str(root), {"a": 3, "b": 3}, size=(20, 20))
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(buf, format="JPEG")
    bad = {
        root / "a" / "garbage.jpg": b"this is not an image at all",
        root / "a" / "empty.png": b"",
        root / "b" / "truncated.jpg": buf.getvalue()[:200],
    }
    png = (root / "b" / "000.png").read_bytes()
    bad[root / "b" / "truncated.png"] = png[: len(png) // 2]
    for path, data in bad.items():
        path.write_bytes(data)
    return str(root), sorted(str(p) for p in bad)


def test_every_undecodable_file_is_reported_by_path(broken):
    root, bad = broken
    ds = folders.scan(root)
    found = check.find_bad_images(ds.files)
    assert sorted(b.path for b in found) == bad
    assert all(b.reason for b in found)


def test_training_refuses_by_default_and_skips_on_request(broken):
    root, bad = broken
    ds = folders.scan(root)
    with pytest.raises(DataError) as err:
        check.exclude_bad_images(ds.files, ds.labels, skip_bad_images=False)
    assert "4 image(s)" in err.value.message and "--skip-bad-images" in err.value.message
    assert all(p in err.value.message for p in bad)
    logged = []
    files, labels, skipped = check.exclude_bad_images(ds.files, ds.labels, skip_bad_images=True, log=logged.append)
    assert skipped == 4 and len(files) == len(labels) == len(ds.files) - 4
    assert not set(files) & set(bad)
    assert "skipping 4" in logged[0]


def test_cli_check_lists_bad_files_and_fails(broken, capsys):
    root, bad = broken
    assert main(["dataset", "check", root]) == 1
    out = capsys.readouterr().out
    assert all(p in out for p in bad) and "4 cannot be decoded" in out


def test_cli_check_passes_a_clean_folder(tmp_path, capsys):
    make_folder(str(tmp_path / "ok"), {"a": 2, "b": 2})
    assert main(["dataset", "check", str(tmp_path / "ok")]) == 0
    assert "0 cannot be decoded" in capsys.readouterr().out
