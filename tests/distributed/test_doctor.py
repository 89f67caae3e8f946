"""`kestrel doctor` on this machine, CPU mode (issue 31 item 5): real TensorFlow, real Horovod, the 2-rank
allreduce through horovodrun --gloo. There is no GPU here: `--gpus 1` must make that a FAIL and a non-zero exit
while the other checks still run on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.distributed.conftest import needs_horovod


def _doctor(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "HOROVOD_", "PMI_", "PMIX_", "KESTREL_"))}
    return subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "doctor", *argv], capture_output=True,
                          text=True, env=dict(env, CUDA_VISIBLE_DEVICES=""), timeout=900)


def _lines(proc: subprocess.CompletedProcess) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        status, _, rest = line.partition(" ")
        out.setdefault(rest.strip().split(":")[0], []).append(status)
    return out


@needs_horovod
def test_doctor_passes_on_the_cpu_with_a_real_two_rank_allreduce():
    proc = _doctor("--gpus", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = _lines(proc)
    assert lines["train"] == ["PASS"] and lines["allreduce"] == ["PASS"], proc.stdout
    assert "sum [3.0, 3.0]" in proc.stdout and "2 ranks over Gloo" in proc.stdout
    assert "nccl_built" in proc.stdout and proc.stdout.strip().splitlines()[-1] == "PASS doctor: all checks passed"


@needs_horovod
def test_doctor_gpus_1_without_a_gpu_fails_and_exits_non_zero():
    proc = _doctor("--gpus", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = _lines(proc)
    assert lines["gpus"][-1] == "FAIL", proc.stdout
    assert "--gpus 1 asks for 1 GPU(s) but TensorFlow sees 0" in proc.stdout
    assert lines["allreduce"] == ["PASS"]  # the rest still ran, on the CPU
    assert proc.stdout.strip().splitlines()[-1] == "FAIL doctor: 1 check(s) failed"
