#!/usr/bin/env bash
# Build the Horovod 0.28.1 wheel once (TensorFlow + Gloo + MPI controllers) into a cache folder outside
# the repo, then install it from that cache. Horovod ships only an sdist and compiles against the installed
# TensorFlow's headers, so it must be built after TensorFlow is in the venv (--no-build-isolation) and in
# a separate pip call; a cold build takes several minutes on 2 cores, a cached install a few seconds.
#
# Usage: scripts/build_horovod.sh [VENV]   (default: $KESTREL_VENV or ./.venv)
# Env:   KESTREL_WHEEL_CACHE   wheel cache folder (default ~/.cache/kestrel-wheels)
#        KESTREL_HOROVOD_JOBS  compile jobs (default: number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${KESTREL_VENV:-$(pwd)/.venv}}
HOROVOD_VERSION=0.28.1
CACHE=${KESTREL_WHEEL_CACHE:-$HOME/.cache/kestrel-wheels}
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
  echo "build_horovod: no virtualenv at $VENV (run scripts/setup.sh)" >&2
  exit 2
fi

# Already installed and importable with the TensorFlow ops: nothing to do.
if "$PY" - "$HOROVOD_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import horovod
import horovod.tensorflow  # loads the compiled TF ops: fails if built against another TensorFlow
sys.exit(0 if horovod.__version__ == sys.argv[1] else 1)
EOF
then
  echo "build_horovod: horovod $HOROVOD_VERSION already installed in $VENV"
  exit 0
fi

if ! "$PY" -c "import tensorflow" >/dev/null 2>&1; then
  echo "build_horovod: TensorFlow must be installed in $VENV first (Horovod compiles against its headers)" >&2
  exit 2
fi
for tool in cmake g++ mpicxx; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build_horovod: '$tool' is missing; install the Debian packages cmake g++ openmpi-bin libopenmpi-dev" >&2
    exit 2
  fi
done

# The cache key names the TensorFlow the wheel was compiled against: a TF change needs a rebuild.
TF_VERSION=$("$PY" -c "import tensorflow as tf; print(tf.__version__)")
PY_TAG=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
SLOT="$CACHE/horovod-$HOROVOD_VERSION-tf$TF_VERSION-$PY_TAG"
mkdir -p "$SLOT"
wheel=$(ls "$SLOT"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n1 || true)

if [ -z "$wheel" ]; then
  echo "build_horovod: building horovod $HOROVOD_VERSION against TensorFlow $TF_VERSION into $SLOT"
  echo "build_horovod: (a cold build takes ~4-10 minutes on 2 cores)"
  start=$(date +%s)
  tmp=$(mktemp -d "$SLOT/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # Horovod's setup.py configures CMake as RelWithDebInfo, which its CMakeLists turns into "-O3 -g -DNDEBUG".
  # Nothing here reads the debug info, and compiling it into every object (each includes TensorFlow's headers)
  # makes the build slower and the wheel larger. setup.py runs the cmake that HOROVOD_CMAKE names: this wrapper
  # sets the RelWithDebInfo flags to "-O2 -DNDEBUG" when configuring (the CMakeLists still raises -O2 to -O3).
  cmake_bin=$(command -v cmake)
  cat > "$tmp/cmake" <<EOF
#!/bin/sh
case "\$1" in --build|--version) exec "$cmake_bin" "\$@" ;; esac
exec "$cmake_bin" "\$@" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -DNDEBUG" -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -DNDEBUG"
EOF
  chmod +x "$tmp/cmake"
  HOROVOD_CMAKE="$tmp/cmake" \
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
  MAKEFLAGS="-j${KESTREL_HOROVOD_JOBS:-$(nproc)}" \
    nice -n 10 "$VENV/bin/pip" wheel --no-build-isolation --no-deps --no-binary horovod \
      -w "$tmp" "horovod==$HOROVOD_VERSION"
  built=$(ls "$tmp"/horovod-"$HOROVOD_VERSION"-*.whl)
  mv "$built" "$SLOT/"  # same filesystem: the wheel appears in the cache complete or not at all
  wheel="$SLOT/$(basename "$built")"
  echo "build_horovod: built $(basename "$wheel") in $(( $(date +%s) - start )) s"
fi

echo "build_horovod: installing $(basename "$wheel") from the cache"
"$VENV/bin/pip" install -q --no-deps "$wheel"
# Horovod's own runtime requirements (cloudpickle, psutil, pyyaml, packaging); TF is already there.
"$VENV/bin/pip" install -q cloudpickle psutil pyyaml packaging
"$PY" -c "import horovod.tensorflow as hvd; assert hvd.gloo_built() and hvd.mpi_built(), 'gloo/mpi missing'; \
print('build_horovod: horovod', __import__('horovod').__version__, 'gloo', hvd.gloo_built(), 'mpi', hvd.mpi_built())"
