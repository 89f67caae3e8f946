#!/usr/bin/env bash
# Set up a machine for Kestrel from the repo's own files: Debian packages, a virtualenv with the
# pinned Python stack (constraints.txt), the project itself (editable). Idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${KESTREL_VENV:-$REPO/.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: the default real data set (Fashion-MNIST IDX files), and the build tools Horovod needs.
APT_PKGS=(dataset-fashion-mnist cmake g++ openmpi-bin libopenmpi-dev)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.kestrel-installed"
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the pinned Python stack (TensorFlow 2.15.1 CPU etc.; a few minutes the first time)"
  "$VENV/bin/pip" install -q -c constraints.txt -e ".[trainer,operator,dev]"
  echo "$want" > "$stamp"
fi
bash scripts/build_horovod.sh "$VENV"  # Horovod 0.28.1 wheel: built once into a cache, then installed
echo "setup: ready ($VENV)"
