"""Shared test helpers: paths to the repo, the conformance corpus and the example specs."""

from __future__ import annotations

import os
import subprocess
import sys
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


def import_fashion_subset(out: Path, per_class: int) -> Path:
    """`kestrel dataset import fashion-mnist --per-class N`: small real data from the Debian package."""
    proc = subprocess.run(
        [sys.executable, "-m", "kestrel_trainer.cli.main", "dataset", "import", "fashion-mnist", "--out", str(out),
         "--per-class", str(per_class)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out
