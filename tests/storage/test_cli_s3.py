"""The CLI with s3:// paths against a real S3 server (versitygw): import -> train -> resume on a fresh machine from the
bucket's newest checkpoint -> evaluate and inference reading the model from the bucket; and the one-line errors that
stop a run before training (missing bucket, wrong credentials, an empty class folder)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train.conftest import TINY_SPEC


def kestrel(s3, *argv: str, cache: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    run_env = {**s3.env, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    if cache is not None:
        run_env["KESTREL_CACHE_DIR"] = str(cache)
    return subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", *argv], env=run_env,
                          capture_output=True, text=True, timeout=900)


def spec_file(folder: Path, data: str, epochs: int) -> Path:
    path = folder / f"spec{epochs}.txt"
    path.write_text(TINY_SPEC.format(data=data, epochs=epochs, mixup=0.0))
    return path


@pytest.mark.slow
def test_import_train_resume_evaluate_inference_all_in_the_bucket(s3, tmp_path):
    proc = kestrel(s3, "dataset", "import", "fashion-mnist", "--out", s3.url("fm"), "--per-class", "8")
    assert proc.returncode == 0, proc.stderr
    assert len([k for k in s3.object_keys("fm/train/") if k.endswith(".png")]) == 80
    assert json.loads(s3.get("fm/classmap.json"))["T-shirt_top"] == 0

    proc = kestrel(s3, "train", "-e", str(spec_file(tmp_path, s3.url("fm"), 1)), "-r", s3.url("run"),
                   cache=tmp_path / "pod1")
    assert proc.returncode == 0, proc.stderr
    keys = s3.object_keys("run/")
    for name in ("weights/resnet_001.hdf5", "training.csv", "status.json", "classmap.json", "summary.json",
                 "training_curves.png"):
        assert f"run/{name}" in keys, keys
    assert any(k.startswith("run/events/") for k in keys), keys
    assert json.loads(s3.get("run/summary.json"))["train_images"] == 80

    # Another pod (an empty cache), one more epoch in the spec: it resumes from the bucket's checkpoint.
    proc = kestrel(s3, "train", "-e", str(spec_file(tmp_path, s3.url("fm"), 2)), "-r", s3.url("run"), "--dry-run",
                   cache=tmp_path / "pod2")
    assert proc.returncode == 0, proc.stderr
    assert f"would resume from {s3.url('run/weights/resnet_001.hdf5')} (1 epochs done)" in proc.stdout, proc.stdout
    proc = kestrel(s3, "train", "-e", str(spec_file(tmp_path, s3.url("fm"), 2)), "-r", s3.url("run"),
                   cache=tmp_path / "pod2")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from" in proc.stderr and "resnet_001.hdf5" in proc.stderr, proc.stderr
    rows = list(csv.DictReader(io.StringIO(s3.get("run/training.csv").decode())))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    statuses = [json.loads(line)["status"] for line in s3.get("run/status.json").decode().splitlines()]
    assert statuses.count("STARTED") == 2 and statuses[-1] == "SUCCESS"  # the first run's records kept
    assert "run/weights/resnet_002.hdf5" in s3.object_keys("run/")
    assert json.loads(s3.get("run/summary.json"))["final_model"] == s3.url("run/weights/resnet_002.hdf5")

    model = s3.url("run/weights/resnet_002.hdf5")
    proc = kestrel(s3, "evaluate", "-e", str(spec_file(tmp_path, s3.url("fm"), 2)), "-m", model,
                   cache=tmp_path / "pod3")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(s3.get("run/evaluate/results.json"))
    assert results["n_images"] == 80 and 0.0 <= results["top_1_accuracy"] <= 1.0
    assert "run/evaluate/confusion_matrix.png" in s3.object_keys("run/")
    assert s3.url("run/evaluate/results.json") in proc.stdout

    proc = kestrel(s3, "inference", "-e", str(spec_file(tmp_path, s3.url("fm"), 2)), "-m", model,
                   "-d", s3.url("fm/test/Bag"), "-r", s3.url("inference"), cache=tmp_path / "pod3")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.reader(io.StringIO(s3.get("inference/result.csv").decode())))
    assert len(rows) == 8 and all(len(r) == 3 for r in rows)
    statuses = [json.loads(line)["status"] for line in s3.get("inference/status.json").decode().splitlines()]
    assert statuses == ["STARTED", "SUCCESS"]  # task_status's file, in the -r prefix of the bucket

    proc = kestrel(s3, "prune", "-m", model, "-o", s3.url("pruned/pruned.hdf5"), "-pth", "0.5", cache=tmp_path / "pod4")
    assert proc.returncode == 0, proc.stderr
    assert s3.object_keys("pruned/") == ["pruned/prune_report.json", "pruned/pruned.hdf5"]
    assert json.loads(s3.get("pruned/prune_report.json"))["file_bytes"]["after"] == len(s3.get("pruned/pruned.hdf5"))

    proc = kestrel(s3, "export", "-e", str(spec_file(tmp_path, s3.url("fm"), 2)), "-m", model, "-o",
                   s3.url("deploy/resnet.onnx"), "--gen_ds_config", cache=tmp_path / "pod4")
    assert proc.returncode == 0, proc.stderr
    assert s3.object_keys("deploy/") == ["deploy/labels.txt", "deploy/nvinfer_config.txt", "deploy/resnet.onnx"]
    classmap = json.loads(s3.get("run/classmap.json"))  # the run's, brought in beside the model from the bucket
    # DeepStream's labels file: one line, the labels separated by ';' (export/deepstream.py)
    assert s3.get("deploy/labels.txt").decode().strip().split(";") == sorted(classmap, key=classmap.get)
    proc = kestrel(s3, "export", "-e", str(spec_file(tmp_path, s3.url("fm"), 2)), "-m", model, "-o",
                   s3.url("deploy/resnet.onnx"), cache=tmp_path / "pod5")  # exists in the bucket: refused
    assert "exists: pass --force" in _one_line_error(proc)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kestrel: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _tiny_dataset(s3, prefix: str, empty_class: bool = False) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, format="PNG")
    for split in ("train", "val"):
        s3.put(f"{prefix}/{split}/a/0.png", buf.getvalue())
        if empty_class:
            s3.put(f"{prefix}/{split}/b/", b"")  # a folder marker with nothing in it (what consoles create)
        else:
            s3.put(f"{prefix}/{split}/b/0.png", buf.getvalue())


def test_missing_bucket_is_one_line_before_training(s3, tmp_path):
    line = _one_line_error(kestrel(s3, "train", "-e", str(spec_file(tmp_path, "s3://no-such-bucket-kestrel/fm", 1)),
                                   "-r", s3.url("run")))
    assert "s3://no-such-bucket-kestrel/fm/train" in line and "does not exist" in line, line
    assert s3.object_keys("run/") == []


def test_wrong_credentials_are_one_line_naming_the_bucket_and_no_secret(s3, tmp_path):
    _tiny_dataset(s3, "d")
    proc = kestrel(s3, "train", "-e", str(spec_file(tmp_path, s3.url("d"), 1)), "-r", s3.url("run"),
                   env={"AWS_SECRET_ACCESS_KEY": "not-the-secret-4242"})
    line = _one_line_error(proc)
    assert s3.url("d/train") in line and "refused the credentials" in line, line
    assert "not-the-secret-4242" not in proc.stderr + proc.stdout


def test_an_empty_class_folder_in_the_bucket_is_one_line_naming_it(s3, tmp_path):
    _tiny_dataset(s3, "d", empty_class=True)
    line = _one_line_error(kestrel(s3, "train", "-e", str(spec_file(tmp_path, s3.url("d"), 1)), "-r",
                                   s3.url("run")))
    assert "class folder has no images" in line and line.endswith(s3.url("d/train/b")), line


def test_dataset_check_on_a_bucket_names_a_bad_image_by_its_url(s3, tmp_path):
    _tiny_dataset(s3, "d")
    s3.put("d/train/b/broken.png", b"not a png at all")
    proc = kestrel(s3, "dataset", "check", s3.url("d/train"))
    assert proc.returncode == 1, proc.stderr
    assert f"{s3.url('d/train/b/broken.png')}: " in proc.stdout, proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith(s3.url("d/train")), proc.stdout
