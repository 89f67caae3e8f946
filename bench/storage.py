"""Training from a staged S3 dataset vs the same data on local disk, and the staging time, in one run.

Starts versitygw (the S3 server of tests/storage, `bash e2e/build.sh --versitygw`) on 127.0.0.1 over a temp folder,
imports a Fashion-MNIST subset to local disk (`kestrel dataset import`) and uploads the same files to a bucket. Then,
in this process, alternating (local, s3, local, s3, ... for --rounds):
- local: `run_training` on the local folders;
- s3: the spec names `s3://bench/fm/train` and `.../val`; staging as one rank does it (`stage_spec_inputs` lists
  the prefixes, then every file is fetched, as the bad-image check of rank 0 of 1 does) into an empty cache is
  timed (cold: every object downloaded), then `run_training` on the staged folders. A second staging of the same
  prefixes (warm: a re-run or a retry on the same node) is timed too.
Steady-state epochs only for images/s (the first pays for tracing); the first epoch's wall time is printed with
staging added for s3. Run by hand (no timed assertions):

    .venv/bin/python bench/storage.py [--per-class 500] [--epochs 3] [--rounds 2] [--image-cache auto]

Prints images/s of each and the ratio s3/local (goal >= 0.95 after staging).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from kestrel_trainer import storage
from kestrel_trainer.cli.common import stage_spec_inputs
from kestrel_trainer.data import folders
from kestrel_trainer.spec import parse_spec_text
from kestrel_trainer.train.loop import TrainOptions, run_training
from tests.conftest import S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY, S3Server, versitygw_binary

SPEC = """
model_config {{ arch: "resnet" n_layers: 18 input_image_size: "1,32,32" use_batch_norm: true }}
train_config {{
  train_dataset_path: "{data}/train" val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ momentum: 0.9 nesterov: true }} }}
  lr_config {{ cosine {{ learning_rate: 0.05 soft_start: 0.05 }} }}
  reg_config {{ type: "None" }}
  batch_size_per_gpu: 128 n_epochs: {epochs} n_workers: 2 preprocess_mode: "torch" label_smoothing: 0.1
}}
"""
BUCKET, PREFIX = "bench", "fm"


class EpochTimer(tf.keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._t = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._t)


def upload(endpoint_port: int, folder: Path) -> tuple[int, int]:
    """The local dataset's files into s3://bench/fm/ with an independent client; (objects, bytes)."""
    from minio import Minio

    client = Minio(f"127.0.0.1:{endpoint_port}", access_key=S3_TEST_ACCESS_KEY, secret_key=S3_TEST_SECRET_KEY,
                   secure=False, region="us-east-1")
    client.make_bucket(BUCKET)
    n = size = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.parts[-3] in ("train", "val"):
            client.fput_object(BUCKET, f"{PREFIX}/{path.relative_to(folder).as_posix()}", str(path))
            n, size = n + 1, size + path.stat().st_size
    return n, size


def stage(spec) -> float:
    """Seconds to stage the spec's s3:// datasets as one rank of one does (`kestrel train`): list them
    (stage_spec_inputs, lazy), then fetch every file (what the bad-image check does with rank 0 of 1)."""
    t = time.perf_counter()
    staged = stage_spec_inputs(spec, train=True)
    for root in (staged.train.train_dataset_path, staged.train.val_dataset_path):
        storage.materialize(folders.scan(root).files)
    return time.perf_counter() - t


def train(spec, results: str, image_cache: str) -> list[float]:
    timer = EpochTimer()
    run_training(spec, TrainOptions(results_dir=results, key="bench-key", verbose=False, image_cache=image_cache,
                                    extra_callbacks=[timer]))
    return timer.seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="local/s3 pairs, alternating (machine load drifts)")
    ap.add_argument("--image-cache", default="auto", choices=["auto", "on", "off"],
                    help="train --image_cache: off reads the (staged or local) files every epoch")
    args = ap.parse_args()
    binary = versitygw_binary()
    if not os.access(binary, os.X_OK):
        sys.exit(f"versitygw is not built ({binary}): run `bash e2e/build.sh --versitygw`")
    work = Path(tempfile.mkdtemp(prefix="kestrel-bench-storage-"))
    data = work / "fm"
    subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "dataset", "import", "fashion-mnist",
                    "--out", str(data), "--per-class", str(args.per_class)], check=True, capture_output=True)
    (work / "s3").mkdir()
    server = S3Server(binary, work / "s3" / "root")
    server.root.mkdir()
    server.start()
    os.environ.update({"AWS_ACCESS_KEY_ID": S3_TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET_KEY,
                       "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": server.endpoint})
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    try:
        n_objects, n_bytes = upload(server.port, data)
        local_spec = parse_spec_text(SPEC.format(data=data, epochs=args.epochs), task="train")
        s3_spec = parse_spec_text(SPEC.format(data=f"s3://{BUCKET}/{PREFIX}", epochs=args.epochs), task="train")
        n_train = len(folders.scan(local_spec.train.train_dataset_path).files)
        runs: dict[str, list[list[float]]] = {"local": [], "s3": []}
        cold, warm = [], []
        for r in range(args.rounds):
            runs["local"].append(train(local_spec, str(work / f"local-{r}"), args.image_cache))
            os.environ["KESTREL_CACHE_DIR"] = str(work / f"cache-{r}")  # empty: every object is downloaded
            cold.append(stage(s3_spec))
            warm.append(stage(s3_spec))  # a re-run on the same node: listed, nothing downloaded
            staged = stage_spec_inputs(s3_spec, train=True)
            assert len(folders.scan(staged.train.train_dataset_path).files) == n_train
            runs["s3"].append(train(staged, str(work / f"s3-{r}"), args.image_cache))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    def rate(epochs: list[list[float]]) -> float:
        steady = [s for run in epochs for s in (run[1:] or run)]
        return n_train * len(steady) / sum(steady)

    loc, s3r = rate(runs["local"]), rate(runs["s3"])
    first_local = statistics.mean(run[0] for run in runs["local"])
    first_s3 = statistics.mean(run[0] for run in runs["s3"])
    print(f"resnet18 1x32x32, {n_train} train images ({n_objects} objects, {n_bytes / 2**20:.1f} MiB train+val in "
          f"the bucket), {args.epochs} epochs x {args.rounds} rounds, image cache {args.image_cache}, versitygw on "
          "loopback")
    print(f"staging cold (empty cache)  : {', '.join(f'{s:.2f}' for s in cold)} s  "
          f"({n_objects / statistics.mean(cold):.0f} objects/s)")
    print(f"staging warm (re-run)       : {', '.join(f'{s:.2f}' for s in warm)} s")
    print(f"first epoch local           : {first_local:.1f} s")
    print(f"first epoch s3 (+ staging)  : {first_s3:.1f} s + {statistics.mean(cold):.1f} s = "
          f"{first_s3 + statistics.mean(cold):.1f} s  (ratio {(first_s3 + statistics.mean(cold)) / first_local:.2f}x)")
    for name in ("local", "s3"):
        print(f"{name:5s} epochs: {[[round(s, 2) for s in run] for run in runs[name]]}")
    print(f"steady images/s: local {loc:.1f}, s3 staged {s3r:.1f}; ratio s3/local {s3r / loc:.3f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
