#!/usr/bin/env bash
# A local Kestrel cluster in one command, as root, after scripts/setup.sh (`up` first runs `e2e/run.sh --prepare`:
# the node's Debian packages, the images and the cluster binaries, each cached; tens of minutes only when cold):
#   bash scripts/dev-cluster.sh up [--nodes N] [--kueue]   control plane, N real nodes, MPI Operator, Kestrel (Helm),
#                                                          sample data; prints the KUBECONFIG to use
#   bash scripts/dev-cluster.sh status                     what runs
#   bash scripts/dev-cluster.sh down                       stop everything (by PID) and remove its state
# The e2e suite's own code (e2e/devcluster.py); images from scripts/build_images.sh (cached by their inputs).
# State: ${KESTREL_DEV_DIR:-~/.cache/kestrel-dev}.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KESTREL_VENV:-$(pwd)/.venv}
if [[ "${1:-}" == "up" ]]; then
    bash e2e/run.sh --prepare >&2
fi
exec "$VENV/bin/python" -m e2e.devcluster "$@"
