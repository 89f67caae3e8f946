#!/usr/bin/env bash
# The project's test command (README and CI): set up if needed, lint, then the fast test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${KESTREL_VENV:-$(pwd)/.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest tests "$@"
