"""Data-parallel scaling on this machine: training throughput of 1 rank vs 2 Horovod ranks, same run otherwise.

Both runs are real `kestrel train` commands on the same real Fashion-MNIST subset and spec (the 2-rank run
starts its ranks with horovodrun over Gloo, as a user's `--gpus 2` does). Measured: the training images/s
of the steady-state epochs (epoch 2 on; epoch 1 pays for graph tracing), from rank 0's progress line at
the end of each epoch (images = steps x batch x ranks; the subset is sized so that no batch is partial),
and each run's wall time. Run by hand:

    .venv/bin/python bench/scaling.py [--per-class 64] [--epochs 4] [--size 32] [--batch 16]

Prints images/s of each, the speed-up 2 ranks / 1 rank and the efficiency (speed-up / 2). On a 2-core
machine shared with other work, expect little or no gain: two ranks split the same two cores, and each
step adds a gradient allreduce. The number is the point, not the gain.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

SPEC = """\
model_config {{ arch: "resnet" n_layers: 10 input_image_size: "1,{size},{size}" use_batch_norm: true
  use_pooling: true }}
train_config {{
  train_dataset_path: "{data}/train"
  val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ momentum: 0.9 }} }}
  lr_config {{ cosine {{ learning_rate: 0.05 soft_start: 0.1 min_lr_ratio: 0.01 }} }}
  batch_size_per_gpu: {batch}
  n_epochs: {epochs}
  n_workers: 2
  random_seed: 7
  preprocess_mode: "torch"
}}
"""
END_OF_EPOCH = re.compile(r"epoch (\d+)/\d+ step (\d+)/(\d+): .* (\d+) img/s")


def run(spec: str, results: str, ranks: int) -> tuple[list[float], float]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KESTREL_KEY", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", spec, "-r", results,
                           "--gpus", "0", "--num_processes", str(ranks)],  # CPU ranks: no GPU here (docs/gpu.md)
                          capture_output=True, text=True, env=env)
    wall = time.monotonic() - start
    if proc.returncode:
        sys.exit(f"{ranks}-rank run failed:\n{proc.stderr[-3000:]}")
    rates = {}
    for line in proc.stderr.splitlines():
        m = END_OF_EPOCH.search(line)
        if m and m.group(2) == m.group(3) and int(m.group(1)) >= 2:
            rates[int(m.group(1))] = float(m.group(4))
    return [rates[e] for e in sorted(rates)], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "fm")
        subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "dataset", "import", "fashion-mnist",
                        "--out", data, "--per-class", str(a.per_class)], check=True, capture_output=True)
        spec = os.path.join(tmp, "spec.txt")
        with open(spec, "w", encoding="utf-8") as fh:
            fh.write(SPEC.format(data=data, size=a.size, batch=a.batch, epochs=a.epochs))
        n = 10 * a.per_class
        print(f"{n} train images, {a.size}x{a.size} grey, ResNet-10, batch {a.batch} per rank, {a.epochs} epochs, "
              f"{os.cpu_count()} cores")
        out = {}
        for ranks in (1, 2):
            rates, wall = run(spec, os.path.join(tmp, f"r{ranks}"), ranks)
            out[ranks] = statistics.median(rates)
            print(f"{ranks} rank(s): {out[ranks]:.0f} img/s (median of epochs 2..{a.epochs}: "
                  f"{', '.join(f'{r:.0f}' for r in rates)}), wall {wall:.1f} s for the whole run")
        speedup = out[2] / out[1]
        print(f"speed-up 2 ranks / 1 rank: {speedup:.2f}x, efficiency {speedup / 2:.0%}")


if __name__ == "__main__":
    main()
