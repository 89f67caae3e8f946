"""Graceful stops of a real 2-rank Horovod job over Open MPI on CPU, the way pods see them.

Each rank registers in its own "pod" folder (KESTREL_RANKS_DIR, set per rank with mpirun's MPMD syntax), and a
real `kestrel-worker` stands in for worker pod 1's PID 1 (its command, sshd's stand-in, is `sleep`). Only that
entrypoint gets SIGTERM, as when Kubernetes deletes one worker pod: rank 1 alone is signalled, both ranks stop
after the same step, rank 0 writes the mid-epoch checkpoint, everything exits 143 and a rerun resumes from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kestrel_trainer.model_io.files import load_model
from kestrel_trainer.spec.contract import PREEMPTED_EXIT_CODE
from kestrel_trainer.train import (
    rank_registry,
    schedules,  # noqa: F401  (checkpoints' optimizers use its schedule)
)
from tests.distributed.conftest import KEY, needs_horovod, train_env, write_spec

pytestmark = [needs_horovod, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI's mpirun is not installed")]

STOPS = re.compile(r"rank (\d) stops after step (\d+) of epoch (\d+) \(signal 15 on rank 1\)")


def _trainer(spec: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r", str(results),
            "--gpus", "2", "--num_processes", "2"]


def _mpirun(pods: list[Path], trainer: list[str]) -> list[str]:
    """mpirun with one app context per rank, each rank registering in its own pod's folder."""
    cmd = ["mpirun", "--bind-to", "none", "-x", "KESTREL_KEY", "-x", "PATH", "-x", "PYTHONPATH"]
    if os.getuid() == 0:
        cmd.append("--allow-run-as-root")
    for i, pod in enumerate(pods):
        if i:
            cmd.append(":")
        cmd += ["-np", "1", "env", f"{rank_registry.RANKS_DIR_ENV}={pod}", *trainer]
    return cmd


def test_a_sigterm_to_one_workers_entrypoint_stops_both_ranks_at_one_step_with_a_checkpoint(tmp_path,
                                                                                          small_subset):
    spec = write_spec(tmp_path, small_subset, epochs=6)
    spec.write_text(spec.read_text().replace("batch_size_per_gpu: 8", "batch_size_per_gpu: 2"))
    spe = 40 // (2 * 2)  # 40 training images, 2 ranks of 2
    results = tmp_path / "r"
    pods = [tmp_path / "pod0", tmp_path / "pod1"]
    env = train_env(PYTHONPATH=os.pathsep.join(sys.path))
    worker1 = subprocess.Popen([sys.executable, "-m", "kestrel_trainer.cli.worker", "--ranks-dir", str(pods[1]),
                                "--", "sleep", "900"], stderr=subprocess.PIPE, text=True, env=env)
    job = subprocess.Popen(_mpirun(pods, _trainer(spec, results)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=env)
    try:
        first = results / "weights" / "resnet_001.tlt"
        deadline = time.time() + 600
        while time.time() < deadline and job.poll() is None and not (
                first.exists() and rank_registry.registered(str(pods[1]))):
            time.sleep(0.1)
        assert first.exists(), "epoch 1 never finished"
        assert [r.rank for r in rank_registry.registered(str(pods[1]))] == [1]  # rank 1 lives in "pod 1"
        assert [r.rank for r in rank_registry.registered(str(pods[0]))] == [0]
        worker1.send_signal(signal.SIGTERM)  # Kubernetes deleting worker pod 1
        out, _ = job.communicate(timeout=300)
        _, worker_err = worker1.communicate(timeout=60)
    finally:
        for p in (job, worker1):
            if p.poll() is None:
                p.kill()
    out = out.replace("\r", "\n")
    assert job.returncode == PREEMPTED_EXIT_CODE, out[-4000:]
    assert re.search(r"sent SIGTERM to rank 1 \(pid \d+\)", worker_err), worker_err
    assert "the ranks of this container have exited" in worker_err, worker_err
    # sshd's stand-in was stopped only after rank 1 had gone, and the entrypoint ended with it
    assert worker1.returncode == 128 + signal.SIGTERM, worker_err
    assert "rank 1 received signal 15" in out and "rank 0 received signal" not in out, out[-4000:]
    stops = {int(r): (int(step), int(epoch)) for r, step, epoch in STOPS.findall(out)}
    assert set(stops) == {0, 1} and stops[0] == stops[1], out[-4000:]  # the same step on both ranks
    step, epoch = stops[0]
    assert epoch >= 2, stops
    errors = [ln for ln in out.splitlines() if ln.startswith("kestrel: error:")]
    # Each rank says the same one line; mpirun stops the other rank as soon as the first exits 143 (after the
    # checkpoint barrier: nothing is lost), so the slower rank's line may never be printed.
    assert 1 <= len(errors) <= 2 and len(set(errors)) == 1, errors
    assert "stopped by signal 15 on rank 1: checkpoint written to" in errors[0], errors
    assert "Traceback" not in out

    # The checkpoint rank 0 wrote is the state after exactly that step (named as step 0 of the next epoch when it
    # was the epoch's last); status.json says why the run stopped.
    written = Path(errors[0].split("checkpoint written to ")[1].split(";")[0])
    expected = (results / "weights" / (f"resnet_{epoch:03d}_step{step:06d}.tlt" if step < spe
                                       else f"resnet_{epoch + 1:03d}_step000000.tlt"))
    assert written == expected, (written, step, spe)
    assert load_model(written, KEY, compile=True).optimizer.iterations.numpy() == (epoch - 1) * spe + step
    status = [json.loads(line) for line in (results / "status.json").read_text().splitlines()]
    assert status[-1]["status"] == "FAILURE", status[-1]
    assert status[-1]["message"] == f"Preempted by signal 15 on rank 1; checkpoint {written}", status[-1]
    assert rank_registry.registered(str(pods[0])) == [] == rank_registry.registered(str(pods[1]))

    # The same job again resumes from that checkpoint and finishes (the spec cut to that epoch: shorter).
    last = epoch if step < spe else epoch + 1
    spec.write_text(spec.read_text().replace("n_epochs: 6", f"n_epochs: {last}"))
    again = subprocess.run(_mpirun(pods, _trainer(spec, results)), capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"resuming from {written}" in again.stdout + again.stderr
    final = results / "weights" / f"resnet_{last:03d}.tlt"
    assert load_model(final, KEY, compile=True).optimizer.iterations.numpy() == last * spe
