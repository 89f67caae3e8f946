"""Strict mode (tests/strict_mode.py): with KESTREL_STRICT=1 every way a test can be skipped fails the run, naming
the test and the skip's reason; without it skips stay skips. Each case runs a real pytest in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SKIPPING = '''
import pytest

@pytest.fixture
def needs_tool():
    pytest.skip("the tool frobnicate is not installed")

@pytest.mark.skipif(True, reason="Open MPI's mpirun is not installed")
def test_marked():
    pass

def test_inline():
    pytest.skip("the data set package is missing")

def test_import():
    pytest.importorskip("a_module_that_is_not_there")

def test_fixture(needs_tool):
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
'''

MODULE_SKIP = '''
import pytest

pytest.skip("the whole module needs a GPU", allow_module_level=True)

def test_never_collected():
    pass
'''


def _pytest(folder: Path, strict: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KESTREL_STRICT"}
    if strict is not None:
        env["KESTREL_STRICT"] = strict
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.strict_mode", "-p", "no:cacheprovider", "-q", "-rA",
         "--rootdir", str(folder), str(folder)],
        capture_output=True, text=True, cwd=folder, env=env, timeout=120,
    )


def _summary(out: str) -> str:
    return out.strip().splitlines()[-1]


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    (tmp_path / "test_skips.py").write_text(SKIPPING)
    return tmp_path


def test_strict_mode_fails_every_skip_naming_the_test_and_the_reason(suite: Path) -> None:
    proc = _pytest(suite, "1")
    assert proc.returncode == 1, proc.stdout
    # a skip in a fixture or a mark is reported at setup: pytest counts those as errors
    assert _summary(proc.stdout).startswith("2 failed, 1 passed, 1 xfailed, 2 errors"), proc.stdout
    for test, reason in [
        ("test_marked", "Open MPI's mpirun is not installed"),
        ("test_inline", "the data set package is missing"),
        ("test_import", "could not import 'a_module_that_is_not_there'"),
        ("test_fixture", "the tool frobnicate is not installed"),
    ]:
        said = f"test_skips.py::{test} was skipped, and KESTREL_STRICT=1 turns skips into failures: {reason}"
        assert said in proc.stdout, proc.stdout


@pytest.mark.parametrize("value", [None, "", "0"])
def test_without_strict_mode_skips_stay_skips(suite: Path, value: str | None) -> None:
    proc = _pytest(suite, value)
    assert proc.returncode == 0, proc.stdout
    assert _summary(proc.stdout).startswith("1 passed, 4 skipped, 1 xfailed"), proc.stdout


def test_strict_mode_fails_a_module_skipped_as_a_whole(tmp_path: Path) -> None:
    (tmp_path / "test_gpu.py").write_text(MODULE_SKIP)
    strict = _pytest(tmp_path, "1")
    assert strict.returncode != 0, strict.stdout
    assert "test_gpu.py was skipped, and KESTREL_STRICT=1 turns skips into failures: the whole module needs a GPU" \
        in strict.stdout, strict.stdout
    assert _pytest(tmp_path, None).returncode == 5  # not strict: nothing ran, nothing failed


def test_the_repo_registers_strict_mode_for_both_suites() -> None:
    """The root conftest.py (loaded for tests/ and e2e/) exposes the hooks; CI and the README's command set it."""
    import conftest as root
    from tests import strict_mode

    assert root.pytest_runtest_makereport is strict_mode.pytest_runtest_makereport
    assert root.pytest_make_collect_report is strict_mode.pytest_make_collect_report
    assert "export KESTREL_STRICT=1" in (REPO / ".ci" / "run").read_text()
    assert "KESTREL_STRICT" in (REPO / "scripts" / "test.sh").read_text()
