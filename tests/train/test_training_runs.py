"""Real training runs on a small real Fashion-MNIST subset (CPU, seeded): outputs, resume, determinism."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from kestrel_trainer.model_io.files import load_model
from kestrel_trainer.train import schedules  # noqa: F401  (checkpoints' optimizers use its schedule)
from tests.train.conftest import write_spec

KEY = "test-key-123"


def _train(spec: Path, results: Path, *extra: str, env_key: bool = True,
           env_extra: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, KESTREL_KEY=KEY) if env_key else dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r", str(results), *extra],
        capture_output=True, text=True, env=env, timeout=900,
    )


def _weights(path: Path) -> list[np.ndarray]:
    return load_model(path, KEY, compile=False).get_weights()


@pytest.mark.slow
def test_train_writes_every_output_and_they_parse(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=2, mixup=0.2)
    spec.write_text(spec.read_text().replace(
        "train_config {", "train_config {\n  visualizer { enabled: true num_images: 3 weight_histograms: true }", 1))
    results = tmp_path / "results"
    started = time.time()
    proc = _train(spec, results, "--log_file", str(tmp_path / "train.log"))
    assert proc.returncode == 0, proc.stderr
    weights = sorted(p.name for p in (results / "weights").iterdir())
    assert weights == ["resnet_001.tlt", "resnet_002.tlt"]
    classmap = json.loads((results / "classmap.json").read_text())
    assert classmap["Ankle_boot"] == 0 and len(classmap) == 10
    rows = list(csv.DictReader((results / "training.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["epoch", "acc", "loss", "lr", "val_acc", "val_loss"]  # the original's order
    assert all(0.0 <= float(r["val_acc"]) <= 1.0 for r in rows)
    # lr: the cosine formula (docs/training.md, the original's with its missing /(1 - soft_start) restored) at the
    # optimizer's step after each epoch: 80 images / 16 = 5 steps per epoch, 10 in all
    base, lo, soft = 0.05, 0.05 * 0.01, 0.2
    for row, step in zip(rows, (5, 10)):
        p = step / 10
        expected = lo + (base - lo) * (1 + math.cos(math.pi * (p - soft) / (1 - soft))) / 2
        assert float(row["lr"]) == pytest.approx(expected, rel=1e-5), row
    status = [json.loads(line) for line in (results / "status.json").read_text().splitlines()]
    # the original's records, in its order (its TAOStatusLogger and train.py)
    assert [s.get("message") for s in status] == [
        "Starting Training Loop.", "Training loop in progress", "Training loop in progress",
        "Training loop complete.", "Final model evaluation in progress.", "Model evaluation is complete.",
        "Training finished successfully."]
    assert [s["status"] for s in status] == ["STARTED"] + ["RUNNING"] * 5 + ["SUCCESS"]
    running = [s for s in status if "epoch" in s]
    assert [s["epoch"] for s in running] == [1, 2] and running[0]["max_epoch"] == 2
    assert list(running[0]["graphical"]) == ["loss", "training_accuracy", "validation_loss", "validation_accuracy",
                                             "learning_rate"]
    # values as the original writes them: metrics as str(float), durations as str(timedelta)
    assert running[1]["graphical"]["validation_accuracy"] == str(float(rows[1]["val_acc"]))
    assert set(running[1]["kpi"]) == {"training_accuracy", "validation_accuracy"}
    assert re.fullmatch(r"\d+:\d\d:\d\d(\.\d{6})?", running[0]["time_per_epoch"]) and running[1]["eta"] == "0:00:00"
    assert list(running[0])[:4] == ["epoch", "max_epoch", "time_per_epoch", "eta"]
    assert status[-1]["kpi"] == {"validation_loss": pytest.approx(float(rows[1]["val_loss"])),
                                 "validation_accuracy": pytest.approx(float(rows[1]["val_acc"]))}
    summary = json.loads((results / "summary.json").read_text())
    assert 0 < summary["wall_seconds"] < time.time() - started + 1  # a duration, not a timestamp
    umask = os.umask(0)
    os.umask(umask)
    for written in (results / "summary.json", results / "training.csv", results / "weights" / "resnet_002.tlt"):
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask, written  # readable as the umask allows
    assert summary["last_val_acc"] == pytest.approx(float(rows[-1]["val_acc"]))
    assert summary["best_val_acc"] == pytest.approx(max(float(r["val_acc"]) for r in rows))
    assert (results / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((results / "events").rglob("events.out.tfevents*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_events = EventAccumulator(str(results / "events" / "train")).Reload()
    assert "epoch_lr" in train_events.Tags()["tensors"] + train_events.Tags()["scalars"]
    # visualizer: weight histograms and sample images, as the original writes them
    assert any("kernel" in tag and "histogram" in tag for tag in train_events.Tags()["tensors"]
               + train_events.Tags()["histograms"])
    images = EventAccumulator(str(results / "events" / "images"), size_guidance={"tensors": 0}).Reload()
    assert "augmented_training_images" in images.Tags()["tensors"] + images.Tags()["images"]
    log_text = (tmp_path / "train.log").read_text()
    assert "epoch 2/2" in log_text and KEY not in log_text
    # the model file is really encrypted: no HDF5 signature, and the key is needed
    assert b"HDF" not in (results / "weights" / "resnet_002.tlt").read_bytes()[:64]


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_an_unbroken_run(tmp_path, fashion_subset):
    spec4 = write_spec(tmp_path, fashion_subset, epochs=4, mixup=0.2)
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert _train(spec4, full).returncode == 0
    # the same run stopped after 2 epochs: train 4 epochs' schedule but stop early by copying epoch-2 state
    first = _train(spec4, broken, "--init_epoch", "1")
    assert first.returncode == 0
    for name in ("resnet_003.tlt", "resnet_004.tlt", "summary.json"):
        target = broken / ("weights" if name.endswith(".tlt") else "") / name
        target.unlink()
    resumed = _train(spec4, broken, "--init_epoch", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "resnet_002.tlt" in resumed.stderr
    a, b = _weights(full / "weights" / "resnet_004.tlt"), _weights(broken / "weights" / "resnet_004.tlt")
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    rows = list(csv.DictReader((broken / "training.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_two_seeded_runs_give_identical_weights_with_or_without_the_image_cache(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=1, mixup=0.2)
    cached = _train(spec, tmp_path / "a")  # auto: a small subset fits, so epochs read the decoded cache
    assert cached.returncode == 0, cached.stderr
    assert "image cache:" in cached.stderr and "training images checked and cached" in cached.stderr
    decoding = _train(spec, tmp_path / "b", "--image-cache", "off")
    assert decoding.returncode == 0, decoding.stderr
    assert "image cache:" not in decoding.stderr
    for x, y in zip(_weights(tmp_path / "a/weights/resnet_001.tlt"), _weights(tmp_path / "b/weights/resnet_001.tlt")):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_existing_checkpoints_resume_instead_of_overwriting(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    results = tmp_path / "r"
    assert _train(spec, results).returncode == 0
    first = (results / "weights" / "resnet_001.tlt").stat().st_mtime_ns
    spec2 = write_spec(tmp_path, fashion_subset, epochs=2)
    again = _train(spec2, results)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stderr and "no --init_epoch given" in again.stderr
    assert (results / "weights" / "resnet_001.tlt").stat().st_mtime_ns == first
    assert (results / "weights" / "resnet_002.tlt").exists()


@pytest.mark.slow
def test_sigterm_mid_epoch_leaves_a_loadable_checkpoint_and_resumes(tmp_path, fashion_subset):
    """SIGTERM a few steps into epoch 2 (40 steps of 2 images per epoch): the run writes a checkpoint of that
    step, 0 < step < 40, whose optimizer has done exactly 40 + step steps, says so, exits 143 and a rerun
    resumes from it."""
    spec = write_spec(tmp_path, fashion_subset, epochs=40)
    spec.write_text(spec.read_text().replace("batch_size_per_gpu: 16", "batch_size_per_gpu: 2"))
    spe = 80 // 2
    results = tmp_path / "r"
    env = dict(os.environ, KESTREL_KEY=KEY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r", str(results)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    # the plain progress lines (stderr is not a terminal): "epoch 2/40 step 4/40: ..." about ten per epoch
    progress = re.compile(rf"epoch 2/40 step (\d+)/{spe}:")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(progress.search(line) for line in lines):
        time.sleep(0.05)
    assert any(progress.search(line) for line in lines), "epoch 2 never started:\n" + "".join(lines[-20:])
    proc.terminate()
    assert proc.wait(timeout=120) == 143
    reader.join(timeout=30)
    err = "".join(lines)
    assert "checkpoint written to" in err and "Traceback" not in err
    names = sorted(p.name for p in (results / "weights").iterdir())
    partial = [n for n in names if "_step" in n]
    assert len(partial) == 1, names
    match = re.fullmatch(r"resnet_(\d{3})_step(\d{6})\.tlt", partial[0])
    assert match, partial
    epoch, step = int(match.group(1)), int(match.group(2))
    assert 0 < step < spe, (epoch, step)
    assert epoch >= 2 and names == [f"resnet_{e:03d}.tlt" for e in range(1, epoch)] + partial  # no later epoch
    newest = results / "weights" / partial[0]
    # the checkpoint is the state after exactly that step: every earlier epoch's steps plus `step`
    assert load_model(newest, KEY, compile=True).optimizer.iterations.numpy() == (epoch - 1) * spe + step
    assert not list((results / "weights").glob("*.tmp*")), "a temp file was left behind"
    assert f"checkpoint written to {newest}" in err
    status = [json.loads(line) for line in (results / "status.json").read_text().splitlines()]
    assert status[-1]["status"] == "FAILURE" and "Preempted" in status[-1]["message"]
    rows = list(csv.DictReader((results / "training.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epoch))  # the cut epoch has no row
    # the epochs done are drawn on the stop (the throttle would not have drawn them within 5 minutes)
    assert (results / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # restart: resumes from that checkpoint and finishes the cut epoch (epochs cut to keep the test short)
    spec.write_text(spec.read_text().replace("n_epochs: 40", f"n_epochs: {epoch}"))
    again = _train(spec, results)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {newest}" in again.stderr and f"{epoch - 1} epochs and {step} steps done" in again.stderr
    final = results / "weights" / f"resnet_{epoch:03d}.tlt"
    assert load_model(final, KEY, compile=True).optimizer.iterations.numpy() == epoch * spe


# `run_training` with one more callback that sends this process SIGTERM as the last step of epoch 1 begins.
SIGTERM_IN_LAST_STEP = """
import os, signal, sys
import tensorflow as tf
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.spec import load_spec
from kestrel_trainer.train.loop import TrainOptions, run_training

class SigtermInLastStep(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 0 and batch + 1 == self.params["steps"]:
            os.kill(os.getpid(), signal.SIGTERM)

try:
    run_training(load_spec(sys.argv[1], "train"), TrainOptions(results_dir=sys.argv[2], key=os.environ["KESTREL_KEY"],
                                                               verbose=False, extra_callbacks=[SigtermInLastStep()]))
except KestrelError as err:
    print(err.message, file=sys.stderr)
    sys.exit(err.exit_code)
"""


@pytest.mark.slow
def test_sigterm_in_the_last_step_of_an_epoch_resumes(tmp_path, fashion_subset):
    """A SIGTERM that arrives while the last step of an epoch runs: every step of the epoch is done, its
    validation is not. The checkpoint then holds all of the epoch's steps and the rerun resumes (it used to
    resume into a 0-step epoch: Keras' ValueError `steps_per_epoch` 0, on every rerun)."""
    spec = write_spec(tmp_path, fashion_subset, epochs=2)
    spe = 80 // 16
    results = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_IN_LAST_STEP, str(spec), str(results)], capture_output=True,
                          text=True, env=dict(os.environ, KESTREL_KEY=KEY), timeout=600)
    assert proc.returncode == 143, proc.stderr[-3000:]
    written = proc.stderr.split("checkpoint written to ")[1].split(";")[0]
    assert load_model(written, KEY, compile=True).optimizer.iterations.numpy() == spe
    again = _train(spec, results)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {written}" in again.stderr and "Traceback" not in again.stderr
    final = results / "weights" / "resnet_002.tlt"
    assert load_model(final, KEY, compile=True).optimizer.iterations.numpy() == 2 * spe
    assert [r["epoch"] for r in csv.DictReader((results / "training.csv").open())][-1] == "2"


def test_wrong_key_is_a_clear_error(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=1)
    results = tmp_path / "r"
    weights = results / "weights"
    weights.mkdir(parents=True)
    (weights / "resnet_001.tlt").write_bytes(b"not a model at all")
    proc = _train(spec, results, "-k", "other")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    # Not ours, not HDF5: it could be the original's unauthenticated .tlt under another key, so both are named.
    assert last.startswith(f"kestrel: error: {weights / 'resnet_001.tlt'}: wrong key or not a model file"), last
    assert "Traceback" not in proc.stderr


def _schedule_state(path: Path) -> tuple[int, int]:
    """(optimizer iterations, schedule total_steps) saved in a checkpoint."""
    optimizer = load_model(path, KEY, compile=True).optimizer
    return int(optimizer.iterations.numpy()), int(optimizer.learning_rate.total_steps)


@pytest.mark.slow
def test_resume_follows_the_current_spec_and_rebases_a_changed_batch_size(tmp_path, fashion_subset):
    """A resumed run uses today's spec (more epochs, another batch size) from this plan's step, as the
    original; a partial epoch whose steps no longer map onto the plan restarts from its beginning."""
    from kestrel_trainer.data.folders import scan
    from kestrel_trainer.data.sharding import steps_per_epoch

    n_train = len(scan(str(fashion_subset / "train")).files)
    results = tmp_path / "r"
    assert _train(write_spec(tmp_path, fashion_subset, epochs=1), results).returncode == 0
    spe16, spe8 = steps_per_epoch(n_train, 16), steps_per_epoch(n_train, 8)
    assert _schedule_state(results / "weights" / "resnet_001.tlt") == (spe16, spe16)

    spec8 = write_spec(tmp_path, fashion_subset, epochs=2)
    spec8.write_text(spec8.read_text().replace("batch_size_per_gpu: 16", "batch_size_per_gpu: 8"))
    shutil.copytree(results, tmp_path / "r2")
    longer = _train(spec8, results)
    assert longer.returncode == 0, longer.stderr
    assert "the steps per epoch changed" in longer.stderr
    assert _schedule_state(results / "weights" / "resnet_002.tlt") == (2 * spe8, 2 * spe8)

    # A partial checkpoint whose step count does not fit (here: a copy of the epoch-1 file named as if 3
    # steps of epoch 2 were done) restarts epoch 2 instead of skipping 3 batches of a different plan.
    weights = tmp_path / "r2" / "weights"
    shutil.copy(weights / "resnet_001.tlt", weights / "resnet_002_step000003.tlt")
    debug = tmp_path / "debug"
    again = _train(write_spec(tmp_path, fashion_subset, epochs=2), tmp_path / "r2",
                   env_extra={"KESTREL_DEBUG_RANKS_DIR": str(debug)})
    assert again.returncode == 0, again.stderr
    assert "epoch 2 restarts from its beginning" in again.stderr
    assert len((debug / "rank0_epoch2.txt").read_text().split()) == n_train
    assert _schedule_state(weights / "resnet_002.tlt") == (2 * spe16, 2 * spe16)
