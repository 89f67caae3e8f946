"""What each model costs on CPU: parameters, MACs/FLOPs, forward and forward+backward images/s.

Run by hand (not a test):  .venv/bin/python bench/models.py [--size 32] [--channels 1] [--batch 32]
    [--archs resnet18,mobilenet_v2,...|--all] [--onednn]
A plain 2-conv Keras CNN (the 0.906 Fashion-MNIST baseline) is measured in the same run and every
row also prints its speed as a ratio to that baseline, so numbers from a busy shared machine still compare.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

DEFAULT = ["resnet10", "resnet18", "resnet34", "resnet50", "vgg16", "alexnet", "googlenet", "mobilenet_v1",
           "mobilenet_v2", "squeezenet", "darknet19", "cspdarknet_tiny", "efficientnet_b0"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=4.0, help="measuring time per mode and model")
    p.add_argument("--archs", default=",".join(DEFAULT))
    p.add_argument("--all", action="store_true", help="every (arch, n_layers)")
    p.add_argument("--no-pooling", action="store_true", help="resnet/vgg with use_pooling=false")
    p.add_argument("--onednn", action="store_true", help="set TF_ENABLE_ONEDNN_OPTS=1 (before TF loads)")
    return p.parse_args(argv)


def split_name(name: str):
    from kestrel_trainer.spec.types import ARCHS_WITH_DEPTH

    for arch in ARCHS_WITH_DEPTH:
        if name.startswith(arch) and name[len(arch):].isdigit():
            return arch, int(name[len(arch):])
    return name, None


def measure(step, x, y, seconds: float) -> float:
    step(x, y)  # trace + warm up
    step(x, y)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step(x, y)
        n += 1
    return n * int(x.shape[0]) / (time.perf_counter() - start)


def bench_model(model, args):
    import numpy as np
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).random((args.batch, args.size, args.size, args.channels), np.float32))
    y = tf.constant(np.arange(args.batch) % 10)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
    opt = tf.keras.optimizers.SGD(0.01, momentum=0.9)

    @tf.function
    def forward(x, _y):
        return model(x, training=False)

    @tf.function
    def train(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    return measure(forward, x, y, args.seconds), measure(train, x, y, args.seconds)


def baseline_cnn(args):
    import tensorflow as tf

    L = tf.keras.layers
    return tf.keras.Sequential([
        tf.keras.Input((args.size, args.size, args.channels)),
        L.Conv2D(32, 3, activation="relu"), L.MaxPooling2D(), L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(),
        L.Flatten(), L.Dense(128, activation="relu"), L.Dense(10, activation="softmax")])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.onednn:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from kestrel_trainer.models.registry import create_model
    from kestrel_trainer.models.summary import count_macs, param_counts
    from kestrel_trainer.spec.defaults import default_activation
    from kestrel_trainer.spec.types import ALL_ARCHS, ARCHS_WITH_DEPTH, ActivationSpec, BatchNormSpec, ModelSpec

    names = [f"{a}{n}" for a, ns in ARCHS_WITH_DEPTH.items() for n in ns] + [
        a for a in ALL_ARCHS if a not in ARCHS_WITH_DEPTH] if args.all else args.archs.split(",")
    print(f"input {args.channels}x{args.size}x{args.size}, batch {args.batch}, "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads, "
          f"oneDNN={'on' if args.onednn else 'default'}")
    fmt = "{:<18} {:>12} {:>10} {:>12} {:>14} {:>8} {:>8}"
    print(fmt.format("model", "params", "MMACs", "fwd img/s", "fwd+bwd img/s", "fwd x", "train x"))
    base_f, base_t = bench_model(baseline_cnn(args), args)
    print(fmt.format("baseline 2-conv", f"{baseline_cnn(args).count_params():,}", "-", f"{base_f:.0f}",
                     f"{base_t:.0f}", "1.00", "1.00"))
    for name in names:
        arch, n = split_name(name)
        act = default_activation(arch)
        spec = ModelSpec(arch=arch, n_layers=n, input_channels=args.channels, input_height=args.size,
                         input_width=args.size, retain_head=False, use_batch_norm=True, use_bias=False,
                         use_pooling=True, all_projections=False, freeze_bn=False, freeze_blocks=(), dropout=0.0,
                         resize_interpolation_method="bilinear", batch_norm=BatchNormSpec(0.9, 1e-5),
                         activation=ActivationSpec(act, {"alpha": 0.1} if act == "leaky_relu" else {}))
        if args.no_pooling:
            spec = replace(spec, use_pooling=False)
        model = create_model(spec, 10)
        total, _ = param_counts(model)
        f, t = bench_model(model, args)
        print(fmt.format(name, f"{total:,}", f"{count_macs(model) / 1e6:.1f}", f"{f:.0f}", f"{t:.1f}",
                         f"{f / base_f:.2f}", f"{t / base_t:.3f}"), flush=True)
        tf.keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
