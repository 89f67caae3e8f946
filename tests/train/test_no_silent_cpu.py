"""No silent CPU (issue 31 item 2): an explicit GPU request that TensorFlow cannot meet fails at start with one
line, exit 2, nothing written; `--gpus 0` and the default (no --gpus) train on the CPU, the default saying so.

This machine has no GPU at all; CUDA_VISIBLE_DEVICES="" hides any that a later machine may have, so the test
means the same everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec.contract import ERROR_LINE, REQUIRE_GPUS_ENV
from kestrel_trainer.train import devices
from tests.train.conftest import write_spec


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("KESTREL_KEY", REQUIRE_GPUS_ENV, devices.CPU_AS_GPUS_ENV)
           and not k.startswith(("OMPI_", "HOROVOD_", "PMI_", "PMIX_"))}
    return dict(env, CUDA_VISIBLE_DEVICES="", **extra)


def _kestrel(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", *argv], capture_output=True,
                          text=True, env=env or _env(), timeout=600)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ERROR_LINE.match(ln.strip())]


def test_resolve_default_explicit_and_env():
    env: dict[str, str] = {}
    assert devices.resolve(None, env, seen=0, built_with_cuda=False) == 0  # the quick start on a laptop
    assert devices.resolve(None, env, seen=2, built_with_cuda=True) == 1  # the original's default where GPUs are
    assert devices.resolve(0, env, seen=4, built_with_cuda=True) == 0
    assert devices.resolve(2, env, seen=2, built_with_cuda=True) == 2
    assert devices.resolve(None, {REQUIRE_GPUS_ENV: "0"}, seen=0, built_with_cuda=False) == 0
    # a rank of 4 under a launcher needs its share: 8 GPUs over 4 ranks, 2 pods of 4 GPUs each -> 2 here at least
    assert devices.resolve(8, env, seen=2, built_with_cuda=True, per_rank_of=4) == 8
    with pytest.raises(KestrelError) as err:
        devices.resolve(8, env, seen=1, built_with_cuda=True, per_rank_of=4)
    assert err.value.exit_code == 2 and "--gpus 8 (2 on this rank's node) asks for 2 GPU(s)" in err.value.message
    # --gpus wins over the pod's variable; the variable alone is a requirement too
    assert devices.resolve(0, {REQUIRE_GPUS_ENV: "4"}, seen=0, built_with_cuda=False) == 0
    with pytest.raises(KestrelError, match=rf"^{REQUIRE_GPUS_ENV}=1 asks for 1 GPU\(s\) but TensorFlow sees 0"):
        devices.resolve(None, {REQUIRE_GPUS_ENV: "1"}, seen=0, built_with_cuda=True)
    with pytest.raises(KestrelError, match=rf"^{REQUIRE_GPUS_ENV}='two': must be a whole number >= 0"):
        devices.resolve(None, {REQUIRE_GPUS_ENV: "two"}, seen=0, built_with_cuda=True)
    # the explicit escape of the CPU tests of data/model parallelism
    assert devices.resolve(2, {devices.CPU_AS_GPUS_ENV: "1"}, seen=0, built_with_cuda=False) == 2


def test_the_line_names_the_visibility_variables_and_the_image():
    env = {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}
    cpu_image = devices.missing_message(1, 1, 0, False, env, 1)
    assert cpu_image == ("--gpus 1 asks for 1 GPU(s) but TensorFlow sees 0 (CUDA_VISIBLE_DEVICES='', "
                         "NVIDIA_VISIBLE_DEVICES='void'); this TensorFlow is not built with CUDA (a CPU image): use "
                         "the GPU trainer image (kestrel-trainer-gpu), or --gpus 0 / gpus: 0 for the CPU")
    driver = devices.missing_message(2, 2, 0, True, {}, None)
    assert driver.startswith(f"{REQUIRE_GPUS_ENV}=2 asks for 2 GPU(s) but TensorFlow sees 0 (CUDA_VISIBLE_DEVICES "
                             "unset, NVIDIA_VISIBLE_DEVICES unset); check the NVIDIA driver")
    assert "\n" not in cpu_image + driver


def test_train_with_gpus_and_none_visible_fails_in_one_line_and_trains_nothing(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    results = tmp_path / "r"
    proc = _kestrel("train", "-e", str(spec), "-r", str(results), "--gpus", "1")
    assert proc.returncode == 2, proc.stderr
    errors = _error_lines(proc.stderr)
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr
    assert errors[0].startswith("kestrel: error: --gpus 1 asks for 1 GPU(s) but TensorFlow sees 0 "
                                "(CUDA_VISIBLE_DEVICES='', NVIDIA_VISIBLE_DEVICES"), errors[0]
    import tensorflow as tf  # what the line's hint says must be what this TensorFlow is

    hint = "not built with CUDA" if not tf.test.is_built_with_cuda() else "check the NVIDIA driver"
    assert hint in errors[0]
    assert "Traceback" not in proc.stderr
    # In a cluster kubelet copies the launcher log's tail (2 KiB at most) into the termination message; the operator
    # reads the line from there into the resource's status (and does not retry it: it is the trainer's own error).
    from kestrel_operator.status.trainer_error import error_line

    assert error_line(proc.stderr[-2048:]) == errors[0]
    assert not results.exists() or not any(results.rglob("*.hdf5")) and not (results / "weights").exists()


def test_the_pods_variable_is_a_requirement_too(tmp_path, fashion_subset):
    """What the operator sets on a pod asking for GPUs (KESTREL_REQUIRE_GPUS from spec.gpus), without --gpus on
    the command line (a one-GPU run's command has none): the same line."""
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    proc = _kestrel("train", "-e", str(spec), "-r", str(tmp_path / "r"), env=_env(**{REQUIRE_GPUS_ENV: "1"}))
    assert proc.returncode == 2, proc.stderr
    assert _error_lines(proc.stderr)[-1].startswith(f"kestrel: error: {REQUIRE_GPUS_ENV}=1 asks for 1 GPU(s)")


def test_a_local_multi_rank_run_is_checked_before_its_ranks_start(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    proc = _kestrel("train", "-e", str(spec), "-r", str(tmp_path / "r"), "--gpus", "2", "-np", "2")
    assert proc.returncode == 2, proc.stderr
    assert _error_lines(proc.stderr) == [proc.stderr.strip().splitlines()[-1]]
    assert "--gpus 2 asks for 2 GPU(s) but TensorFlow sees 0" in proc.stderr
    assert "starting 2 ranks" not in proc.stderr


def test_evaluate_with_gpus_and_none_visible_fails_in_one_line(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    model = tmp_path / "model.hdf5"
    model.write_bytes(b"")  # never read: the check comes first
    proc = _kestrel("evaluate", "-e", str(spec), "-m", str(model), "--gpus", "1")
    assert proc.returncode == 2, proc.stderr
    assert _error_lines(proc.stderr)[-1].startswith("kestrel: error: --gpus 1 asks for 1 GPU(s) but TensorFlow sees 0")


def test_gpus_0_trains_and_the_default_says_cpu_in_one_line(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    explicit = _kestrel("train", "-e", str(spec), "-r", str(tmp_path / "cpu"), "--gpus", "0")
    assert explicit.returncode == 0, explicit.stderr
    assert (tmp_path / "cpu" / "weights" / "resnet_001.hdf5").exists()
    assert devices.CPU_LINE not in explicit.stderr
    default = _kestrel("train", "-e", str(spec), "-r", str(tmp_path / "default"))
    assert default.returncode == 0, default.stderr
    assert (tmp_path / "default" / "weights" / "resnet_001.hdf5").exists()
    assert sum(devices.CPU_LINE in ln for ln in default.stderr.splitlines()) == 1, default.stderr


def test_the_dry_run_needs_no_gpu_check(tmp_path: Path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    proc = _kestrel("train", "-e", str(spec), "-r", str(tmp_path / "r"), "--gpus", "1", "--dry-run")
    assert proc.returncode == 0, proc.stderr
