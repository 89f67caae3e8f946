"""Fixtures for distributed-training tests: a small real Fashion-MNIST subset, specs, a Horovod check."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import import_fashion_subset
from tests.train.conftest import TINY_SPEC

KEY = "dist-test-key-42"

needs_horovod = pytest.mark.skipif(
    importlib.util.find_spec("horovod") is None, reason="Horovod is not installed (scripts/build_horovod.sh)")


@pytest.fixture(scope="session")
def small_subset(tmp_path_factory) -> Path:
    """4 real images per class per split (120 files), imported from the Debian package."""
    out = tmp_path_factory.mktemp("fashion-dist") / "fm"
    return import_fashion_subset(out, per_class=4)


def write_spec(folder: Path, data: Path, epochs: int = 2, model_parallelism: tuple[float, ...] = ()) -> Path:
    """The training tests' tiny ResNet-10 at 16x16; batch 8 so that every rank runs a few steps, and a
    lower rate (x2 ranks) so that the few images do not blow the weights up."""
    text = (TINY_SPEC.format(data=data, epochs=epochs, mixup=0.0)
            .replace("batch_size_per_gpu: 16", "batch_size_per_gpu: 8")
            .replace("learning_rate: 0.05", "learning_rate: 0.01"))
    if model_parallelism:
        fractions = " ".join(f"model_parallelism: {f}" for f in model_parallelism)
        text = text.replace("  n_workers: 2\n", f"  n_workers: 2\n  {fractions}\n")
    path = folder / "spec.txt"
    path.write_text(text)
    return path


def train_env(**extra: str) -> dict[str, str]:
    # --gpus N on this machine without a GPU: CPU logical devices, explicitly (train.devices; no silent CPU)
    env = dict(os.environ, KESTREL_KEY=KEY, KESTREL_CPU_AS_GPUS="1", **extra)
    for name in list(env):  # a test run under some launcher must not make our ranks join it
        if name.startswith(("OMPI_", "HOROVOD_", "PMI_", "PMIX_")):
            del env[name]
    return env


def kestrel_train(spec: Path, results: Path, *extra: str, env: dict[str, str] | None = None,
                  timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r", str(results), *extra],
        capture_output=True, text=True, env=env or train_env(), timeout=timeout,
    )
