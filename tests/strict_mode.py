"""Strict mode for every test suite of the repo (tests/ and e2e/): with KESTREL_STRICT=1 a skipped test fails.
The hooks are registered by the repo's root conftest.py, so they apply to `pytest tests` and `pytest e2e` alike.

CI (.ci/run) and the README's test command (scripts/test.sh) set it: there a skip can only mean that something
the suite needs is missing (a Debian package, a built binary, the real MPI Operator), and that must fail the run
rather than pass it with fewer tests. Run pytest without it to allow skips on a machine that lacks a part.
"""

from __future__ import annotations

import os

import pytest

STRICT_ENV = "KESTREL_STRICT"


def strict_mode() -> bool:
    """True when KESTREL_STRICT is set to anything but empty or 0."""
    return os.environ.get(STRICT_ENV, "").strip() not in ("", "0")


def _skip_reason(longrepr: object) -> str:
    """The reason pytest recorded for a skip: longrepr is (path, line, "Skipped: reason") for skips."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def strict_failure(what: str, longrepr: object) -> str:
    return f"{what} was skipped, and {STRICT_ENV}=1 turns skips into failures: {_skip_reason(longrepr)}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ARG001
    """A skipped test (skip mark, pytest.skip, importorskip, a skipping fixture) fails in strict mode.
    An expected failure (xfail) is not a skip and is left as it is."""
    report = yield
    if strict_mode() and report.skipped and not hasattr(report, "wasxfail"):
        report.longrepr = strict_failure(item.nodeid, report.longrepr)
        report.outcome = "failed"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A module skipped as a whole (pytest.skip(allow_module_level=True)) fails its collection in strict mode."""
    report = yield
    if strict_mode() and report.skipped:
        report.longrepr = strict_failure(collector.nodeid, report.longrepr)
        report.outcome = "failed"
    return report
