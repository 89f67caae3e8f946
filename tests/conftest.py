"""Shared test helpers: paths to the repo, the conformance corpus and the example specs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI lays shared/ beside the clone; developers have it at /work/shared.
SHARED = Path(os.environ.get("KESTREL_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "conformance" / "specs"


@pytest.fixture
def conformance_specs() -> list[Path]:
    specs = sorted(CONFORMANCE.glob("*.txt"))
    if not specs:
        pytest.fail(f"no conformance specs found under {CONFORMANCE}; set KESTREL_SHARED")
    return specs
