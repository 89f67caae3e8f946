"""Data-parallel training with Horovod on CPU: 2 real ranks over Gloo (our launcher) and over `mpirun`.

Each rank writes its own debugging records into KESTREL_DEBUG_RANKS_DIR (its pid, the images it fed
to the model per epoch, its final weights), so the tests can see every rank, not just rank 0's outputs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from kestrel_trainer.data import folders
from kestrel_trainer.model_io.files import load_model
from kestrel_trainer.train import schedules  # noqa: F401  (checkpoints' optimizers use its schedule)
from tests.distributed.conftest import KEY, kestrel_train, needs_horovod, train_env, write_spec

pytestmark = [needs_horovod, pytest.mark.slow]


def _rank_weights(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_ranks_identical(debug: Path) -> None:
    w0, w1 = _rank_weights(debug / "rank0_final.h5"), _rank_weights(debug / "rank1_final.h5")
    assert w0.keys() == w1.keys() and len(w0) > 10
    for name in w0:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)


def _assert_epochs_cover_the_set_once(debug: Path, data: Path, epochs: int) -> None:
    everything = sorted(folders.scan(str(data / "train")).files)
    for epoch in range(1, epochs + 1):
        seen = [(debug / f"rank{r}_epoch{epoch}.txt").read_text().split() for r in (0, 1)]
        assert seen[0] and seen[1]
        assert not set(seen[0]) & set(seen[1]), "an image went to both ranks"
        union = seen[0] + seen[1]
        assert len(union) == len(set(union)), "an image was seen twice in one epoch"
        assert sorted(union) == everything


def _val_metrics_single_process(model_path: Path, spec_path: Path) -> tuple[float, float]:
    """Loss and accuracy of a checkpoint on the whole validation set, in this one process."""
    from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset
    from kestrel_trainer.spec import load_spec
    from kestrel_trainer.train.regularizers import add_regularization

    spec = load_spec(str(spec_path), "train")
    val = folders.scan(spec.train.val_dataset_path)
    model = load_model(model_path, KEY, compile=True)
    add_regularization(model, spec.train.reg)  # training's val_loss includes the L2 term; files do not keep it
    ds = make_dataset(val.files, val.labels, val.n_classes,
                      PipelineOptions.for_evaluation(spec.model, spec.train, spec.train.batch_size_per_gpu))
    loss, acc = model.evaluate(ds, verbose=0)
    return float(loss), float(acc)


def test_two_gloo_ranks_train_in_step_and_only_rank0_writes(tmp_path, small_subset):
    spec = write_spec(tmp_path, small_subset, epochs=2)
    results, debug = tmp_path / "r", tmp_path / "debug"
    proc = kestrel_train(spec, results, "--gpus", "2", "--use_amp",
                         env=train_env(KESTREL_DEBUG_RANKS_DIR=str(debug)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "starting 2 ranks with horovodrun" in proc.stderr
    assert "--use_amp ignored: no GPU visible" in proc.stderr
    _assert_ranks_identical(debug)
    _assert_epochs_cover_the_set_once(debug, small_subset, 2)
    # rank 0 alone wrote the outputs: one of each, one STARTED, progress lines from rank 0 only
    assert sorted(p.name for p in (results / "weights").iterdir()) == ["resnet_001.tlt", "resnet_002.tlt"]
    status = [json.loads(line) for line in (results / "status.json").read_text().splitlines()]
    assert [s["status"] for s in status] == ["STARTED"] + ["RUNNING"] * 5 + ["SUCCESS"]  # 2 epochs + 3 closing
    assert len(list((results / "events" / "train").glob("events.out.tfevents*"))) == 1
    assert "[0]<stderr>" in proc.stderr and "epoch 2/2" in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith("[1]") and "epoch 2/2" in line]
    summary = json.loads((results / "summary.json").read_text())
    assert summary["ranks"] == 2
    # the final checkpoint is rank 0's (= every rank's) weights
    final = load_model(results / "weights" / "resnet_002.tlt", KEY, compile=False)
    w0 = _rank_weights(debug / "rank0_final.h5")
    for layer in final.layers:
        for var, value in zip(layer.weights, layer.get_weights()):
            key = next(k for k in w0 if k.endswith(var.name))
            np.testing.assert_array_equal(w0[key], value)
    # validation is sharded; its metrics, weighted by each rank's images, are the whole set's metrics
    row = list(csv.DictReader((results / "training.csv").open()))[-1]
    loss, acc = _val_metrics_single_process(results / "weights" / "resnet_002.tlt", spec)
    assert float(row["val_acc"]) == pytest.approx(acc, abs=1e-6)
    assert float(row["val_loss"]) == pytest.approx(loss, rel=1e-4)
    # the LR is scaled by the number of ranks: the schedule in the checkpoint says 2
    assert load_model(results / "weights" / "resnet_002.tlt", KEY).optimizer.learning_rate.n_ranks == 2


def test_ranks_check_their_own_shards_and_skip_the_same_bad_file(tmp_path, small_subset):
    """Each rank decodes only its shard at start-up; a broken file one rank found is dropped by both, so
    the shards still cover the kept set exactly once and the weights stay identical."""
    data = tmp_path / "data"
    shutil.copytree(small_subset, data)
    train_files = sorted(folders.scan(str(data / "train")).files)
    broken = train_files[1]  # in rank 1's shard: rank 0 never decodes it
    Path(broken).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    spec = write_spec(tmp_path, data, epochs=1)
    results, debug = tmp_path / "r", tmp_path / "debug"
    refused = kestrel_train(spec, tmp_path / "refused", "--gpus", "2", env=train_env())
    assert refused.returncode != 0 and broken in refused.stderr and "--skip-bad-images" in refused.stderr
    proc = kestrel_train(spec, results, "--gpus", "2", "--skip-bad-images",
                         env=train_env(KESTREL_DEBUG_RANKS_DIR=str(debug)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "skipping 1 image(s)" in proc.stderr and broken in proc.stderr
    _assert_ranks_identical(debug)
    seen = [(debug / f"rank{r}_epoch1.txt").read_text().split() for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [f for f in train_files if f != broken]


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI's mpirun is not installed")
def test_ranks_started_by_mpirun_join_the_job(tmp_path, small_subset):
    """The MPIJob way: mpirun starts the ranks; each detects it and joins instead of launching its own."""
    spec = write_spec(tmp_path, small_subset, epochs=1)
    results, debug = tmp_path / "r", tmp_path / "debug"
    cmd = ["mpirun", "-np", "2", "--bind-to", "none", "-map-by", "slot", "-x", "KESTREL_KEY",
           "-x", "KESTREL_DEBUG_RANKS_DIR", "-x", "PATH"]
    if os.getuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += [sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r", str(results),
            "--gpus", "2", "--num_processes", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=train_env(KESTREL_DEBUG_RANKS_DIR=str(debug)))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "starting 2 ranks" not in proc.stderr  # nobody launched a second time
    assert "rank 0 of 2 (local rank 0), Horovod over MPI" in proc.stderr
    _assert_ranks_identical(debug)
    _assert_epochs_cover_the_set_once(debug, small_subset, 1)
    assert sorted(p.name for p in (results / "weights").iterdir()) == ["resnet_001.tlt"]


def test_a_dead_rank_stops_the_job_fast_and_a_rerun_resumes(tmp_path, small_subset):
    spec = write_spec(tmp_path, small_subset, epochs=8)
    results, debug = tmp_path / "r", tmp_path / "debug"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r", str(results),
         "--gpus", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=train_env(KESTREL_DEBUG_RANKS_DIR=str(debug)))
    deadline = time.time() + 400
    first = results / "weights" / "resnet_001.tlt"
    while time.time() < deadline and not first.exists() and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), "the first epoch never finished"
    # rank 0, the one that writes the outputs, dies mid-run (the OOM killer): it cannot record its own failure
    os.kill(int((debug / "rank0.pid").read_text()), signal.SIGKILL)
    killed = time.time()
    _, err = proc.communicate(timeout=180)
    assert time.time() - killed < 120, "the job did not stop promptly after a rank died"
    assert proc.returncode not in (0, None)
    assert "a rank failed, so all 2 ranks were stopped" in err
    assert "the last complete checkpoint is" in err and "run the same command again to resume" in err
    last = err.split("the last complete checkpoint is ")[1].split(";")[0]
    assert last.endswith(".tlt") and Path(last).exists()
    done = int(Path(last).stem.split("_")[1])
    assert load_model(last, KEY, compile=True).optimizer.iterations.numpy() > 0
    status = [json.loads(line) for line in (results / "status.json").read_text().splitlines()]
    assert status[-1]["status"] == "FAILURE", status[-1]  # what a tool tailing status.json sees: the job failed
    assert status[-1]["message"].startswith("a rank failed, so all 2 ranks were stopped"), status[-1]
    # rerun (fewer epochs to keep the test short): resumes from that checkpoint and finishes
    spec2 = write_spec(tmp_path, small_subset, epochs=done + 1)
    again = kestrel_train(spec2, results, "--gpus", "2")
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"resuming from {last}" in again.stderr
    assert (results / "weights" / f"resnet_{done + 1:03d}.tlt").exists()


AMP_CHAIN = """
import json, os, sys
import numpy as np
import tensorflow as tf
from kestrel_trainer.train import distributed as dist
ranks = dist.init_ranks()
tf.keras.utils.set_random_seed(1 + ranks.rank)  # different starts: the broadcast must align them
model = tf.keras.Sequential([tf.keras.Input((6,)), tf.keras.layers.Dense(4, activation="relu"),
                             tf.keras.layers.Dense(3, activation="softmax")])
wrap = dist.optimizer_wrapper(ranks, loss_scaling=True)
model.compile(optimizer=wrap(tf.keras.optimizers.legacy.SGD(0.1)), loss="categorical_crossentropy")
dist.broadcast_state(ranks, model)
rng = np.random.default_rng(ranks.rank)  # each rank its own data
x = rng.normal(size=(32, 6)).astype("float32")
y = tf.keras.utils.to_categorical(rng.integers(0, 3, 32), 3)
model.fit(x, y, batch_size=8, epochs=1, verbose=0)
opt = model.optimizer
if ranks.is_chief:  # the wrapped optimizer's checkpoint must load without Horovod
    from kestrel_trainer.model_io.files import save_model
    save_model(model, sys.argv[1], None)
import horovod.tensorflow as hvd
flat = np.concatenate([w.ravel() for w in model.get_weights()])
both = hvd.allgather(tf.constant(flat[None, :])).numpy()
print(json.dumps({"rank": ranks.rank, "loss_scale": float(opt.loss_scale),
                  "is_lso": isinstance(opt, tf.keras.mixed_precision.LossScaleOptimizer),
                  "distributed": "_allreduce" in type(opt.inner_optimizer).__dict__,  # Horovod's SGD
                  "iterations": int(opt.iterations.numpy()),
                  "same": bool(np.array_equal(both[0], both[1]))}))
"""


def test_loss_scaling_around_the_distributed_optimizer_steps_and_saves(tmp_path):
    """--use_amp's optimizer chain, LossScaleOptimizer(DistributedOptimizer(SGD)), on 2 CPU ranks in float32."""
    script = tmp_path / "amp_chain.py"
    script.write_text(AMP_CHAIN)
    horovodrun = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
    proc = subprocess.run([horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(script),
                           str(tmp_path / "m.hdf5")], capture_output=True, text=True, timeout=300, env=train_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = [json.loads(line.split(">:", 1)[1]) for line in proc.stdout.splitlines() if line.strip().endswith("}")]
    assert sorted(o["rank"] for o in outs) == [0, 1]
    for o in outs:
        assert o["is_lso"] and o["distributed"], o
        assert o["loss_scale"] > 1 and o["iterations"] == 4  # dynamic loss scale in use, 4 steps applied
        assert o["same"]  # both ranks hold the same weights after averaged, unscaled updates
    import tensorflow as tf

    saved = load_model(tmp_path / "m.hdf5", None, compile=True)  # no Horovod needed to read it back
    assert isinstance(saved.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert int(saved.optimizer.iterations.numpy()) == 4
