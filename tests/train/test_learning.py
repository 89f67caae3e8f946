"""A real run learns, and what train, evaluate and inference report is what the model computes.

One short run on real Fashion-MNIST (50 images per class per split, 28x28 grey, ResNet-10, 4 epochs), started
the way a TAO user starts it (`classification_tf1 train -e spec -r results -k key`) inside a pretend cluster: the
operator's environment names a ClassificationTrain and a loopback HTTP server stands in for the API server, so the
trainer's per-epoch progress patches are recorded. The tests below share that run; each checks one thing a user
relies on against a value computed here, independently of the trainer: chance level, NumPy argmax over the
model's own outputs on the PNGs decoded with PIL, scikit-learn's accuracy and confusion matrix, the weights the
training process held at the end (written by its debugging aid with Keras' own save_weights).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, confusion_matrix

from kestrel_trainer.cli.tao import main as tao_main
from kestrel_trainer.model_io.files import load_model
from kestrel_trainer.train import schedules  # noqa: F401  (checkpoints' optimizers use its schedule)
from tests.conftest import import_fashion_subset
from tests.operator.loopback_api import LoopbackApi

pytestmark = pytest.mark.slow

KEY = "learn-key-7"
EPOCHS = 4
SPEC = """\
model_config {{
  arch: "resnet"
  n_layers: 10
  input_image_size: "1,28,28"
  use_batch_norm: true
  use_pooling: true
}}
train_config {{
  train_dataset_path: "{data}/train"
  val_dataset_path: "{data}/val"
  optimizer {{ sgd {{ momentum: 0.9 }} }}
  lr_config {{ cosine {{ learning_rate: 0.02 soft_start: 0.1 min_lr_ratio: 0.01 }} }}
  reg_config {{ type: "None" }}
  batch_size_per_gpu: 32
  n_epochs: {epochs}
  n_workers: 2
  random_seed: 7
  preprocess_mode: "torch"
}}
eval_config {{ eval_dataset_path: "{data}/test" top_k: 3 batch_size: 64 }}
"""
# The ClassificationTrain the pretend operator started this run for (what it sets on the run's pods).
RESOURCE = {"KESTREL_RESOURCE_GROUP": "kestrel.dev", "KESTREL_RESOURCE_VERSION": "v1alpha1",
            "KESTREL_RESOURCE_PLURAL": "classificationtrains", "KESTREL_RESOURCE_NAME": "fashion",
            "KESTREL_RESOURCE_NAMESPACE": "ml", "KESTREL_RESOURCE_UID": "uid-1", "KESTREL_RUN": "fashion-g1"}
STATUS_PATH = "/apis/kestrel.dev/v1alpha1/namespaces/ml/classificationtrains/fashion/status"


def classification_tf1() -> str:
    """The drop-in console script installed beside this Python (pyproject's [project.scripts])."""
    path = Path(sys.executable).parent / "classification_tf1"
    assert path.exists(), f"{path} is missing: the package is not installed (scripts/setup.sh)"
    return str(path)


def run_tao(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([classification_tf1(), *argv], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The trained run: its folders, the PATCH requests the API server received, the training's own weights."""
    root = tmp_path_factory.mktemp("learn")
    data = import_fashion_subset(root / "fm", per_class=50)
    spec = root / "spec.txt"
    spec.write_text(SPEC.format(data=data, epochs=EPOCHS))
    results, debug = root / "results", root / "debug"
    with LoopbackApi() as api:
        api.responses[("GET", STATUS_PATH)] = (200, {"metadata": {"uid": "uid-1"}})
        env = dict(os.environ, **RESOURCE, KUBECONFIG=str(api.kubeconfig(root)), KESTREL_DEBUG_RANKS_DIR=str(debug))
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.pop("KESTREL_KEY", None)  # the key comes from -k, as the original's users pass it
        train = run_tao("train", "-e", str(spec), "-r", str(results), "-k", KEY, env=env)
        requests = list(api.requests)
    return {"root": root, "data": data, "spec": spec, "results": results, "debug": debug, "requests": requests,
            "train": train, "final": results / "weights" / f"resnet_{EPOCHS:03d}.tlt"}


def _rows(results: Path) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader((results / "training.csv").open())]


def test_training_learns_fashion_mnist(run):
    """Loss falls and validation accuracy ends far above chance (0.1 for 10 classes).

    Measured on this seeded run: loss 1.81 -> 0.48, val_acc 0.23 -> 0.75 (training accuracy 0.82). The
    thresholds leave wide margins: half the first epoch's loss, and 0.6, six times chance; a run that does not
    learn (no gradient step, labels shuffled against images, a broken loss) stays near ln(10) = 2.30 and 0.1.
    """
    rows = _rows(run["results"])
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert rows[-1]["loss"] < rows[0]["loss"] / 2, rows
    assert rows[-1]["loss"] < 0.5 * math.log(10), rows  # cross-entropy of a uniform guess is ln(10)
    assert rows[-1]["val_acc"] > 0.6, rows
    assert rows[-1]["val_loss"] < math.log(10), rows
    # the reported val_acc is the final model's accuracy on the validation PNGs, recomputed here
    _, x, labels, _ = _images(run, "val")
    pred = np.argmax(load_model(run["final"], KEY, compile=False).predict(x, batch_size=100, verbose=0), axis=1)
    assert rows[-1]["val_acc"] == pytest.approx(float(np.mean(pred == labels)), abs=1e-6)
    summary = json.loads((run["results"] / "summary.json").read_text())
    assert summary["last_val_acc"] == pytest.approx(rows[-1]["val_acc"])
    assert summary["final_model"] == str(run["final"])


def _images(run, split: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """A split's PNGs decoded with PIL and normalised with the original's torch formula (28x28 input: no resize);
    labels from the folder names in the run's classmap order."""
    classmap = json.loads((run["results"] / "classmap.json").read_text())
    names = sorted(classmap, key=classmap.get)
    files, labels = [], []
    for name in names:
        for path in sorted((run["data"] / split / name).glob("*.png")):
            files.append(str(path))
            labels.append(classmap[name])
    pixels = np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files])[..., None]
    assert pixels.shape == (500, 28, 28, 1)
    x = (pixels / 255.0 - 0.449) / 0.224  # grey: the ImageNet means' average, the original's 0.224
    return files, x.astype(np.float32), np.array(labels), names


def tao_in_process(*argv: str) -> None:
    """`classification_tf1 ...` in this process (TensorFlow is loaded once; train ran the console script)."""
    assert tao_main(list(argv)) == 0


def test_evaluate_reports_the_models_own_accuracy(run, capsys):
    """`evaluate`'s top-1 and confusion matrix are the model's argmax against the labels, recomputed here."""
    out = run["root"] / "evaluate"
    tao_in_process("evaluate", "-e", str(run["spec"]), "-m", str(run["final"]), "-k", KEY, "-r", str(out))
    reported = json.loads((out / "results.json").read_text())
    _, x, labels, names = _images(run, "test")
    model = load_model(run["final"], KEY, compile=False)
    pred = np.argmax(model.predict(x, batch_size=100, verbose=0), axis=1)
    mine = float(np.mean(pred == labels))
    assert reported["n_images"] == len(labels) == 500
    assert reported["top_1_accuracy"] == pytest.approx(mine, abs=1e-12)
    assert mine == pytest.approx(accuracy_score(labels, pred))
    np.testing.assert_array_equal(np.array(reported["confusion_matrix"]),
                                  confusion_matrix(labels, pred, labels=range(len(names))))
    assert reported["classes"] == names
    assert mine > 0.6  # the held-out test set, as the validation set above
    assert f"top-1 accuracy: {mine:.4f}" in capsys.readouterr().out


def test_inference_names_the_models_argmax_class(run):
    out = run["root"] / "inference"
    tao_in_process("inference", "-e", str(run["spec"]), "-m", str(run["final"]), "-k", KEY, "-d",
            str(run["data"] / "test"), "-r", str(out))
    rows = {row[0]: row[1:] for row in csv.reader((out / "result.csv").open())}
    files, x, _, names = _images(run, "test")
    scores = load_model(run["final"], KEY, compile=False).predict(x, batch_size=100, verbose=0)
    assert sorted(rows) == sorted(files)
    for file, s in zip(files, scores):
        name, confidence = rows[file]
        assert name == names[int(np.argmax(s))], file
        assert float(confidence) == pytest.approx(float(np.max(s)), abs=2e-6)
    # not one class for everything: the predictions spread over the classes as the labels do
    assert len({row[0] for row in rows.values()}) >= 8


def _saved_weights(path: Path) -> dict[str, np.ndarray]:
    """Every array of a Keras HDF5 weights file, by its path in the file."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_the_final_checkpoint_restores_every_weight_the_training_ended_with(run):
    """Loading the last checkpoint gives exactly the weights (BN statistics included) the training process held
    when it finished, as Keras' save_weights wrote them from inside that process."""
    trained = _saved_weights(run["debug"] / "rank0_final.h5")
    model = load_model(run["final"], KEY, compile=False)
    assert len(model.weights) > 20 and len(trained) == len(model.weights)
    compared = set()
    for layer in model.layers:
        for var, value in zip(layer.weights, layer.get_weights()):
            key = f"{layer.name}/{var.name}"
            assert key in trained, key
            np.testing.assert_array_equal(value, trained[key], err_msg=key)
            compared.add(key)
    assert compared == set(trained)
    # the optimizer state is the end of the plan: every step of every epoch done
    steps = math.ceil(500 / 32)
    assert int(load_model(run["final"], KEY, compile=True).optimizer.iterations.numpy()) == EPOCHS * steps


def test_progress_reaches_the_kubernetes_resource(run):
    """The trainer patches the ClassificationTrain's status.progress after every epoch with training.csv's
    numbers, the percent of the run's steps done and the time left; `kubectl get` shows the last patch (merge
    patches replace the progress each time). A long epoch also sends reports inside it (every 30 s, with the
    last finished epoch's numbers): on a slow machine these may appear between the epochs' own."""
    requests = run["requests"]
    assert requests[0]["method"] == "GET" and requests[0]["path"] == STATUS_PATH  # same resource (uid) first
    patches = [r for r in requests if r["method"] == "PATCH"]
    assert all(r["path"] == STATUS_PATH and r["content_type"] == "application/merge-patch+json" for r in patches)
    assert all(r["authorization"] == "Bearer test-token" for r in requests)
    assert all(list(r["body"]) == ["status"] and list(r["body"]["status"]) == ["progress"] for r in patches)
    reports = [r["body"]["status"]["progress"] for r in patches]
    # an epoch's own report is the last one naming it (the reports inside the next epoch name it too); reports
    # inside the first epoch name epoch 0, which has no report of its own and no metrics yet
    assert all(p["loss"] is None and p["accuracy"] is None for p in reports if p["epoch"] == 0)
    ends = [p for i, p in enumerate(reports)
            if p["epoch"] > 0 and (i + 1 == len(reports) or reports[i + 1]["epoch"] != p["epoch"])]
    rows = _rows(run["results"])
    assert len(ends) == len(rows) == EPOCHS
    assert [p["epoch"] for p in reports] == sorted(p["epoch"] for p in reports)
    assert [p["percent"] for p in reports] == sorted(p["percent"] for p in reports)
    for progress, row in zip(ends, rows):
        assert {k: progress[k] for k in ("epoch", "maxEpoch", "run")} == {
            "epoch": int(row["epoch"]), "maxEpoch": EPOCHS, "run": "fashion-g1"}
        # whole epochs of 16 steps (500 images / 32) out of 4 x 16, in whole percent rounded down
        assert progress["percent"] == 100 * int(row["epoch"]) * 16 // (EPOCHS * 16)
        assert re.fullmatch(r"(\d+h)?(\d+m)?\d+s|\d+[hm]", progress["eta"]), progress["eta"]
        for field, column in (("loss", "loss"), ("accuracy", "acc"), ("valLoss", "val_loss"),
                              ("valAccuracy", "val_acc")):
            assert progress[field] == pytest.approx(row[column], rel=1e-6), field
    last = ends[-1]
    assert last["epoch"] == EPOCHS and last["valAccuracy"] > 0.6
    assert (last["percent"], last["eta"]) == (100, "0s")
