#!/usr/bin/env bash
# The project's test command (README and CI): set up if needed, lint, then the fast test suite.
# Strict by default (tests/strict_mode.py): setup.sh installed everything (and the S3 server is built below), so a
# skipped test fails; KESTREL_STRICT=0 allows skips.
# Tests run in KESTREL_TEST_WORKERS pytest-xdist processes (default 2, one per core: most tests spend their time
# in one Python thread; KESTREL_TEST_WORKERS=0 runs them in this process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The S3-compatible server of the storage tests (tests/conftest.py `s3_server`): versitygw built from its Go module
# into ~/.cache/kestrel-e2e/s3 (cached by the module's hash: a few minutes cold, instant after).
bash e2e/build.sh --versitygw >/dev/null
VENV=${KESTREL_VENV:-$(pwd)/.venv}
export KESTREL_STRICT=${KESTREL_STRICT:-1}
"$VENV/bin/ruff" check .
"$VENV/bin/lint-imports"  # the import layers in pyproject.toml [tool.importlinter]
# The distribution users install (docs/install.md): the sdist, and the wheel built from it, into dist/ (~30 s);
# tests/test_packaging.py checks both and installs the wheel into a fresh virtualenv.
rm -rf dist
build_log=$(mktemp)
"$VENV/bin/python" -m build --outdir dist . >"$build_log" 2>&1 || { cat "$build_log" >&2; exit 1; }  # quiet unless it fails
rm -f "$build_log"
export KESTREL_DIST=$(pwd)/dist
"$VENV/bin/python" -m pytest -n "${KESTREL_TEST_WORKERS:-2}" --durations=25 tests "$@"
