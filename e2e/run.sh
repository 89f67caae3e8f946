#!/usr/bin/env bash
# CI entry for the end-to-end suite: build the control-plane binaries when the cache is cold (tens of
# minutes on 2 cores; seconds when warm), then run e2e/ against them. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KESTREL_VENV:-$(pwd)/.venv}
start=$(date +%s)
bash e2e/build.sh
echo "e2e: binaries ready after $(( $(date +%s) - start )) s"
# The CPU images (podman; cached by their inputs, seconds when warm) and their OCI archives for the node.
export KESTREL_IMAGE_ARCHIVES=${KESTREL_IMAGE_ARCHIVES:-$HOME/.cache/kestrel-images/archives}
bash scripts/build_images.sh --save "$KESTREL_IMAGE_ARCHIVES"
echo "e2e: images ready after $(( $(date +%s) - start )) s"
KESTREL_E2E_BUILD=1 "$VENV/bin/python" -m pytest e2e -q "$@"
echo "e2e: total $(( $(date +%s) - start )) s"
