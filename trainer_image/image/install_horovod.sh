#!/bin/sh
# Image step: install Horovod 0.28.1 into the venv that already holds TensorFlow.
#  - A prebuilt wheel in ./wheels (scripts/build_images.sh copies the one scripts/build_horovod.sh caches,
#    compiled against the same TensorFlow, Python and Debian Open MPI): installed in seconds.
#  - Otherwise (a plain `docker build` from the repository root), compile it, with the build tools installed
#    and removed again in this step: several minutes. HOROVOD_* build variables come from the environment
#    (the GPU Dockerfile sets HOROVOD_GPU_OPERATIONS=NCCL and the CUDA paths).
# Then check that it loads with the controllers the image promises (HOROVOD_EXPECT: gloo mpi [nccl]).
set -eu
VERSION=0.28.1
wheel=$(ls wheels/horovod-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -n "$wheel" ]; then
  pip install --no-deps "$wheel"
else
  apt-get update
  apt-get install -y --no-install-recommends cmake g++ make libopenmpi-dev
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
    HOROVOD_WITH_MPI=1 pip install --no-deps --no-build-isolation --no-binary horovod "horovod==$VERSION"
  apt-get purge -y cmake g++ make libopenmpi-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
fi
# Horovod's own runtime requirements (TensorFlow is already installed).
pip install -c constraints.txt cloudpickle psutil pyyaml packaging
python - ${HOROVOD_EXPECT:-gloo mpi} <<'PY'
import sys

import horovod
import horovod.tensorflow as hvd

built = {"gloo": hvd.gloo_built(), "mpi": hvd.mpi_built(), "nccl": hvd.nccl_built()}
print("horovod", horovod.__version__, "built with", built)
missing = [c for c in sys.argv[1:] if not built[c]]
sys.exit(f"horovod lacks {missing}" if missing else 0)
PY
