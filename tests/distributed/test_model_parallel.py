"""Layer-wise model parallelism: the split rule, the device plan, and real training on 2 logical CPU devices."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kestrel_trainer.errors import KestrelError
from kestrel_trainer.train import schedules  # noqa: F401  (checkpoints' optimizers use its schedule)
from kestrel_trainer.train.model_parallel import PlacementRow, format_table, plan_devices, split_layers
from tests.distributed.conftest import KEY, kestrel_train, write_spec


def test_layers_are_split_in_order_by_normalised_fractions():
    assert split_layers(10, (0.5, 0.5)) == [0] * 5 + [1] * 5
    assert split_layers(10, (0.25, 0.75)) == [0] * 2 + [1] * 8  # round(2.5) -> 2
    assert split_layers(8, (0.2, 0.3, 0.5)) == [0] * 2 + [1] * 2 + [2] * 4
    # a tiny fraction still gets a layer, and never takes the last device's only one
    assert split_layers(3, (0.01, 0.01, 0.98)) == [0, 1, 2]
    assert split_layers(4, (0.98, 0.01, 0.01)) == [0, 0, 1, 2]
    with pytest.raises(KestrelError, match="cannot split 1 layers into 2"):
        split_layers(1, (0.5, 0.5))


def test_device_plan_gives_each_rank_its_own_gpus():
    # 4 GPUs, 2 ranks, 2 parts: local rank 1 owns GPUs 2 and 3; --gpu_index remaps them
    assert plan_devices(4, 2, 1, (1, 3), n_visible_gpus=4).gpu_ids == (2, 3)
    assert plan_devices(4, 2, 1, (1, 1), n_visible_gpus=4).fractions == (0.5, 0.5)
    assert plan_devices(4, 2, 0, (1, 1), n_visible_gpus=6, gpu_index=(5, 4, 1, 0)).gpu_ids == (5, 4)
    cpu = plan_devices(2, 1, 0, (0.3, 0.7), n_visible_gpus=0)
    assert cpu.gpu_ids == () and cpu.split and cpu.fractions == pytest.approx((0.3, 0.7))
    assert not plan_devices(1, 1, 0, (), n_visible_gpus=0).split
    with pytest.raises(KestrelError, match=r"each rank gets 2 GPUs \(--gpus 4 / --num_processes 2\), so "
                                           r"model_parallelism needs 2 entries, got 3; 3 entries need --gpus = 6"):
        plan_devices(4, 2, 0, (1, 1, 1), n_visible_gpus=4)
    # 2 devices per rank without model_parallelism: refused, as the operator refuses it (one shared rule)
    with pytest.raises(KestrelError, match="model_parallelism needs 2 entries, got 0"):
        plan_devices(4, 2, 0, (), n_visible_gpus=4)
    with pytest.raises(KestrelError, match="--gpus must be a multiple of --num_processes: --gpus 3, --num_processes 2"):
        plan_devices(3, 2, 0, (), n_visible_gpus=0)
    with pytest.raises(KestrelError, match="only 2 GPU"):
        plan_devices(4, 2, 1, (1, 1), n_visible_gpus=2)


def test_split_table_names_ranges_devices_params_and_memory():
    rows = [PlacementRow("/GPU:0", "conv1", "block_2a_relu", 12, 1234567, 3 * 2**20),
            PlacementRow("/GPU:1", "block_3a_conv", "predictions", 9, 42, 2**19)]
    table = format_table(rows, 64, physical=(2, 3))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["layers", "device", "params"] and "batch of 64" in lines[0]
    assert "conv1 .. block_2a_relu (12)" in lines[1] and "/GPU:0 (GPU 2)" in lines[1] and "1,234,567" in lines[1]
    assert lines[1].rstrip().endswith("3.0 MiB") and lines[2].rstrip().endswith("0.5 MiB")


ONE_STEP = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from kestrel_trainer.spec import load_spec
    from kestrel_trainer.data import folders
    from dataclasses import replace
    from kestrel_trainer.data.pipeline import PipelineOptions, make_dataset
    from kestrel_trainer.models.registry import create_model
    from kestrel_trainer.train import model_parallel as mp
    from kestrel_trainer.train.task import compile_model, make_optimizer

    spec = load_spec(sys.argv[1], "train")
    plan = mp.plan_devices(2, 1, 0, spec.train.model_parallelism, n_visible_gpus=0)
    devices = mp.configure_devices(plan)
    data = folders.scan(spec.train.train_dataset_path)
    options = replace(PipelineOptions.for_training(spec.model, spec.train, 16), n_epochs=1)
    x, y = next(iter(make_dataset(data.files, data.labels, data.n_classes, options)))

    def model(split):
        tf.keras.utils.set_random_seed(3)
        m = create_model(spec.model, data.n_classes)
        if split:
            m, rows = mp.place_model(m, devices, plan.fractions, 16)
        compile_model(m, spec, make_optimizer(spec, total_steps=10))
        return m

    out = {}
    for split in (False, True):
        m = model(split)
        first = float(m.train_on_batch(x, y)[0])
        second = float(m.evaluate(x, y, verbose=0, batch_size=16)[0])
        out[str(split)] = [first, second]
    placed = model(True)
    fn = tf.function(lambda a: placed(a, training=True)).get_concrete_function(tf.TensorSpec([None, *x.shape[1:]]))
    op_devices = sorted({op.device.split("device:")[-1] for op in fn.graph.get_operations()
                         if op.type in ("Conv2D", "MatMul")})
    var_devices = sorted({v.device.split("device:")[-1] for v in placed.trainable_variables})
    print(json.dumps({"loss": out, "layer_devices": sorted(set(mp.devices_of(placed).values())),
                      "op_devices": op_devices, "var_devices": var_devices,
                      "logical": len(tf.config.list_logical_devices("CPU"))}))
""")


@pytest.mark.slow
def test_split_over_two_logical_cpus_gives_the_unsplit_loss_after_one_step(tmp_path, small_subset):
    spec = write_spec(tmp_path, small_subset, model_parallelism=(0.4, 0.6))
    proc = subprocess.run([sys.executable, "-c", ONE_STEP, str(spec)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["logical"] == 2
    # really split: layers, their variables and their convolutions/matmuls live on both devices
    assert got["layer_devices"] == ["/CPU:0", "/CPU:1"]
    assert got["var_devices"] == ["CPU:0", "CPU:1"]
    assert got["op_devices"] == ["CPU:0", "CPU:1"]
    unsplit, split = got["loss"]["False"], got["loss"]["True"]
    np.testing.assert_allclose(split[0], unsplit[0], rtol=0, atol=1e-5)  # the step's loss
    np.testing.assert_allclose(split[1], unsplit[1], rtol=0, atol=1e-5)  # the loss after the step's update
    assert unsplit[1] != unsplit[0]  # the step changed the weights


@pytest.mark.slow
def test_cli_trains_model_parallel_logs_the_split_and_resumes(tmp_path, small_subset):
    spec = write_spec(tmp_path, small_subset, epochs=1, model_parallelism=(1, 1))
    results = tmp_path / "r"
    proc = kestrel_train(spec, results, "--gpus", "2", "--num_processes", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model parallelism over 2 devices per rank" in proc.stderr
    table = proc.stderr.split("model parallelism over 2 devices per rank:")[1].splitlines()[1:4]
    assert "/CPU:0" in table[1] and "/CPU:1" in table[2] and "MiB" in table[2]
    from kestrel_trainer.model_io.files import load_model

    model = load_model(results / "weights" / "resnet_001.tlt", KEY, compile=False)  # an ordinary model file
    assert model.output_shape[-1] == 10
    spec2 = write_spec(tmp_path, small_subset, epochs=2, model_parallelism=(1, 1))
    again = kestrel_train(spec2, results, "--gpus", "2", "--num_processes", "1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stderr and (results / "weights" / "resnet_002.tlt").exists()
    resumed = load_model(results / "weights" / "resnet_002.tlt", KEY, compile=True)
    first = load_model(results / "weights" / "resnet_001.tlt", KEY, compile=True)
    # the optimizer state was carried over into the re-placed model: its step counter continued
    assert int(resumed.optimizer.iterations.numpy()) == 2 * int(first.optimizer.iterations.numpy())


def test_model_parallelism_needs_matching_device_count(tmp_path, small_subset):
    spec = write_spec(tmp_path, small_subset, epochs=1, model_parallelism=(1, 1))
    proc = kestrel_train(spec, tmp_path / "r")
    assert proc.returncode == 2
    assert ("model_parallelism has 2 entries but each rank gets 1 GPU (--gpus 1 / --num_processes 1); 2 entries "
            "need --gpus = 2 with --num_processes = 1") in proc.stderr
    assert "Traceback" not in proc.stderr
