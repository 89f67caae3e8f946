"""Root conftest: loaded for every suite under the repo (tests/, e2e/). Registers strict mode (tests/strict_mode.py:
with KESTREL_STRICT=1, as CI and scripts/test.sh set it, a skipped test fails)."""

from tests.strict_mode import pytest_make_collect_report, pytest_runtest_makereport

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]
