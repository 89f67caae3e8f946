#!/usr/bin/env bash
# A local Kestrel cluster in one command, as root, after scripts/setup.sh and `bash e2e/build.sh`:
#   bash scripts/dev-cluster.sh up [--nodes N] [--kueue]   control plane, N real nodes, MPI Operator, Kestrel (Helm),
#                                                          sample data; prints the KUBECONFIG to use
#   bash scripts/dev-cluster.sh status                     what runs
#   bash scripts/dev-cluster.sh down                       stop everything (by PID) and remove its state
# The e2e suite's own code (e2e/devcluster.py); images from scripts/build_images.sh (cached by their inputs).
# State: ${KESTREL_DEV_DIR:-~/.cache/kestrel-dev}.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KESTREL_VENV:-$(pwd)/.venv}
exec "$VENV/bin/python" -m e2e.devcluster "$@"
