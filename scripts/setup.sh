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
  # The distribution was called "kestrel" before it became kestrel-classify (that name on PyPI is another
  # project): drop a venv's old editable install of this repo, so one distribution owns the commands.
  old_dist=$("$VENV/bin/pip" show -f kestrel 2>/dev/null || true)
  if grep -q "__editable__" <<<"$old_dist"; then "$VENV/bin/pip" uninstall -q -y kestrel; fi
  "$VENV/bin/pip" install -q -c constraints.txt -e ".[trainer,operator,tracking,dev]"
  echo "$want" > "$stamp"
fi
bash scripts/build_horovod.sh "$VENV"  # Horovod 0.28.1 wheel: built once into a cache, then installed

# NVIDIA's own codec (scripts/nvidia-codec-requirements.txt), the tests' oracle for the original's .tlt/.etlt
# encryption: a cp310-only wheel, so it gets its own Python 3.10 virtualenv. No Python 3.10 is an error, not a
# skip: the oracle tests would have nothing to run.
CODEC_VENV=${KESTREL_CODEC_VENV:-$REPO/.venv-nvidia-codec}
find_python310() {
  local candidate
  for candidate in "${KESTREL_PYTHON310:-}" $(ls -d "$HOME"/.pyenv/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V -r) \
                   "$(command -v python3.10 || true)"; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}
codec_want=$(cat scripts/nvidia-codec-requirements.txt scripts/nvidia-codec-runtime.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$CODEC_VENV/.kestrel-installed" ] || [ "$(cat "$CODEC_VENV/.kestrel-installed")" != "$codec_want" ]; then
  if ! PY310=$(find_python310); then
    echo "setup: error: no Python 3.10 (looked at \$KESTREL_PYTHON310, ~/.pyenv/versions/3.10.*, python3.10 on PATH):" \
         "NVIDIA's codec (nvidia-eff-tao-encryption, cp310 only) needs it for the encryption oracle tests" >&2
    exit 1
  fi
  echo "setup: creating $CODEC_VENV ($PY310) with NVIDIA's codec"
  [ -x "$CODEC_VENV/bin/python" ] || "$PY310" -m venv "$CODEC_VENV"
  "$CODEC_VENV/bin/pip" install -q -r scripts/nvidia-codec-runtime.txt
  "$CODEC_VENV/bin/pip" install -q --no-deps --require-hashes -r scripts/nvidia-codec-requirements.txt
  "$CODEC_VENV/bin/python" -c 'from eff_tao_encryption.tao_codec import tao_codec'
  echo "$codec_want" > "$CODEC_VENV/.kestrel-installed"
fi
echo "setup: ready ($VENV)"
