"""Training-step time of a model whose last stages work on tiny feature maps, with and without
models/conv_taps.sliced_convolutions (what `kestrel train` uses), in the same run.

Run by hand (not a test):  .venv/bin/python bench/small_maps.py [--spec examples/specs/fashion_mnist_resnet18.txt]
    [--batch 128] [--steps 10] [--rounds 2]

Random inputs of the spec's size; plain Keras fit steps (train_on_batch) of the spec's model, SGD. Prints
seconds per step and images/s of each variant, best of the rounds (the variants alternate), and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer_image"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=os.path.join(os.path.dirname(__file__), "..", "examples", "specs",
                                                       "fashion_mnist_resnet18.txt"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import tensorflow as tf

    from kestrel_trainer.models.conv_taps import sliced_convolutions
    from kestrel_trainer.models.registry import create_model
    from kestrel_trainer.spec import load_spec

    spec = load_spec(args.spec, "train").model
    h, w, c = spec.input_shape
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, h, w, c), dtype=np.float32)
    y = tf.one_hot(rng.integers(0, 10, args.batch), 10)
    models = {}
    for name, context in (("plain", contextlib.nullcontext), ("sliced", sliced_convolutions)):
        with context():
            model = create_model(spec, 10)
            model.compile(optimizer=tf.keras.optimizers.SGD(0.05, momentum=0.9), loss="categorical_crossentropy")
            model.train_on_batch(x, y)  # traced here, inside the context
        models[name] = model
    best = {}
    print(f"{spec.arch}{spec.n_layers or ''} {h}x{w}x{c}, batch {args.batch}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            seconds = (time.perf_counter() - start) / args.steps
            best[name] = min(best.get(name, seconds), seconds)
            print(f"  {name:<7} {seconds:7.3f} s/step {args.batch / seconds:8.1f} img/s", flush=True)
    print(f"best of {args.rounds}: plain {best['plain']:.3f} s/step, sliced {best['sliced']:.3f} s/step: "
          f"{best['plain'] / best['sliced']:.2f}x; load average after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
