"""Fixtures for data tests."""

from __future__ import annotations

import pytest

from tests.data.helpers import make_folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "ds"
    make_folder(str(root), {"cat": 5, "dog": 4, "eel": 3})
    return str(root)
