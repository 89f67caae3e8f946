"""`kestrel train --evaluate`: after training, rank 0 evaluates the final model as `kestrel evaluate` does, writes
RESULTS/evaluate/results.json, and reports top-1/top-k into the resource's status.progress before it exits.

Real runs on real Fashion-MNIST images (8 per class per split, 28x28 so that no resize is involved, ResNet-10,
8 epochs of 5 steps: about 10 s of training) inside a pretend cluster: the operator's environment names a
ClassificationTrain and a loopback HTTP server stands in for the API server. The accuracy is recomputed here
with NumPy from the saved final model's outputs on the test PNGs decoded with PIL.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kestrel_trainer.cli.main import build_parser, main
from kestrel_trainer.model_io.files import load_model
from kestrel_trainer.train import schedules  # noqa: F401  (checkpoints' optimizers use its schedule)
from kestrel_trainer.train.launcher import rank_arguments
from tests.operator.loopback_api import LoopbackApi
from tests.train.conftest import write_spec

KEY = "eval-key-5"
EPOCHS = 8
RESOURCE = {"KESTREL_RESOURCE_GROUP": "kestrel.dev", "KESTREL_RESOURCE_VERSION": "v1alpha1",
            "KESTREL_RESOURCE_PLURAL": "classificationtrains", "KESTREL_RESOURCE_NAME": "gate",
            "KESTREL_RESOURCE_NAMESPACE": "ml", "KESTREL_RESOURCE_UID": "uid-7", "KESTREL_RUN": "gate-1"}
STATUS_PATH = "/apis/kestrel.dev/v1alpha1/namespaces/ml/classificationtrains/gate/status"
needs_horovod = pytest.mark.skipif(
    importlib.util.find_spec("horovod") is None, reason="Horovod is not installed (scripts/build_horovod.sh)")
AGE = re.compile(r"(\d+d)?(\d+h)?(\d+m)?(\d+s)?")  # kubectl-style durations: 45s, 4m10s, 1h2m


def _spec(folder: Path, data: Path) -> Path:
    """The training tests' tiny spec at the images' own size, with a rate that learns them in 8 short epochs."""
    spec = write_spec(folder, data, epochs=EPOCHS)
    spec.write_text(spec.read_text().replace('input_image_size: "1,16,16"', 'input_image_size: "1,28,28"')
                    .replace("learning_rate: 0.05", "learning_rate: 0.01"))
    return spec


def _cluster_env(api: LoopbackApi, folder: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, **RESOURCE, KESTREL_KEY=KEY, KUBECONFIG=str(api.kubeconfig(folder)), **extra)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


def _train(spec: Path, results: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r",
                           str(results), *extra], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _test_images(results: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test PNGs, normalised with the original's torch formula for grey images (28x28 input: no resize),
    labelled in the run's classmap order."""
    classmap = json.loads((results / "classmap.json").read_text())
    files, labels = [], []
    for name in sorted(classmap, key=classmap.get):
        for path in sorted((data / "test" / name).glob("*.png")):
            files.append(path)
            labels.append(classmap[name])
    pixels = np.stack([np.asarray(Image.open(f), dtype=np.float32) for f in files])[..., None]
    return ((pixels / 255.0 - 0.449) / 0.224).astype(np.float32), np.array(labels)


def _numpy_accuracies(model_path: Path, results: Path, data: Path, k: int) -> tuple[float, float, int]:
    x, labels = _test_images(results, data)
    scores = load_model(model_path, KEY, compile=False).predict(x, batch_size=100, verbose=0)
    predicted = np.argmax(scores, axis=1)
    assert len(set(predicted)) >= 4  # a model that learnt something, not one class for every image
    top1 = float(np.mean(predicted == labels))
    # top-k as evaluate defines it for ties (a briefly trained model's softmax saturates: many scores are equal):
    # the label counts when fewer than k classes score strictly higher than it
    topk = float(np.mean([np.sum(row > row[label]) < k for row, label in zip(scores, labels)]))
    return top1, topk, len(labels)


def _patches(requests: list[dict]) -> list[dict]:
    patches = [r for r in requests if r["method"] == "PATCH"]
    assert all(r["path"] == STATUS_PATH and r["content_type"] == "application/merge-patch+json" for r in patches)
    return [r["body"]["status"]["progress"] for r in patches]


@pytest.fixture(scope="module")
def run(tmp_path_factory, fashion_subset):
    root = tmp_path_factory.mktemp("train-evaluate")
    spec, results = _spec(root, fashion_subset), root / "results"
    with LoopbackApi() as api:
        api.responses[("GET", STATUS_PATH)] = (200, {"metadata": {"uid": "uid-7"}})
        train = _train(spec, results, _cluster_env(api, root), "--evaluate")
        requests = list(api.requests)
    return {"root": root, "spec": spec, "results": results, "train": train, "requests": requests,
            "final": results / "weights" / f"resnet_{EPOCHS:03d}.tlt"}


@pytest.mark.slow
def test_results_json_holds_the_final_models_own_accuracy(run, fashion_subset):
    reported = json.loads((run["results"] / "evaluate" / "results.json").read_text())
    summary = json.loads((run["results"] / "summary.json").read_text())
    assert summary["final_model"] == str(run["final"]) and reported["model"] == str(run["final"])
    top1, top3, n = _numpy_accuracies(run["final"], run["results"], fashion_subset, k=3)
    assert reported["n_images"] == n == 80 and reported["top_k"] == 3
    assert reported["top_1_accuracy"] == pytest.approx(top1, abs=1e-12)
    assert reported["top_3_accuracy"] == pytest.approx(top3, abs=1e-12)
    assert top1 > 0.25 and top3 >= top1  # measured: 0.45 and 0.74 (chance: 0.1 and 0.3)
    # one log line with both numbers
    line = [ln for ln in run["train"].stderr.splitlines() if "top-1 accuracy" in ln]
    assert len(line) == 1 and f"top-1 accuracy {top1:.4f}, top-3 accuracy {top3:.4f}" in line[0], line


@pytest.mark.slow
def test_results_json_is_what_kestrel_evaluate_writes(run, capsys):
    out = run["root"] / "kestrel-evaluate"
    assert main(["evaluate", "-e", str(run["spec"]), "-m", str(run["final"]), "-k", KEY, "-r", str(out)]) == 0
    capsys.readouterr()
    assert json.loads((out / "results.json").read_text()) == json.loads(
        (run["results"] / "evaluate" / "results.json").read_text())
    assert sorted(p.name for p in (run["results"] / "evaluate").iterdir()) == sorted(p.name for p in out.iterdir()
                                                                                    if p.name != "status.json")


@pytest.mark.slow
def test_the_cluster_status_gets_progress_then_the_evaluation(run):
    progress = _patches(run["requests"])
    reported = json.loads((run["results"] / "evaluate" / "results.json").read_text())
    *epochs, evaluation = progress
    # every report of the training (mid-epoch ones too, on a slow machine) moves forward; each epoch's ends it
    ends = [p for i, p in enumerate(epochs) if i + 1 == len(epochs) or epochs[i + 1]["epoch"] != p["epoch"]]
    assert [p["epoch"] for p in ends] == list(range(1, EPOCHS + 1))
    assert [p["percent"] for p in ends] == [100 * 5 * e // (5 * EPOCHS) for e in range(1, EPOCHS + 1)]  # 12 .. 100
    assert all(AGE.fullmatch(p["eta"]) and p["eta"] for p in ends) and ends[-1]["eta"] == "0s"
    assert [p["percent"] for p in epochs] == sorted(p["percent"] for p in epochs)
    assert "top1Accuracy" not in ends[-1]
    # the evaluation: only its fields, with the run and the time, sent after the last epoch's report
    assert list(evaluation) == ["top1Accuracy", "topKAccuracy", "topK", "run", "updateTime"]
    assert evaluation["top1Accuracy"] == reported["top_1_accuracy"]
    assert evaluation["topKAccuracy"] == reported["top_3_accuracy"] and evaluation["topK"] == 3
    assert evaluation["run"] == "gate-1" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", evaluation["updateTime"])


@pytest.mark.slow
def test_a_finished_run_is_evaluated_again_without_a_cluster(run):
    """Run again, resume finds every epoch done ("nothing to train"): --evaluate still evaluates the final model;
    outside a cluster (no operator environment) it writes results.json and the log line, and reports nowhere."""
    results = run["results"]
    first = json.loads((results / "evaluate" / "results.json").read_text())
    shutil.rmtree(results / "evaluate")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREL_RESOURCE_") and k != "KESTREL_RUN"}
    proc = _train(run["spec"], results, dict(env, KESTREL_KEY=KEY), "--evaluate")
    assert "nothing to train" in proc.stderr
    assert json.loads((results / "evaluate" / "results.json").read_text()) == first
    assert f"top-1 accuracy {first['top_1_accuracy']:.4f}" in proc.stderr
    assert sorted(p.name for p in (results / "weights").iterdir()) == [
        f"resnet_{e:03d}.tlt" for e in range(1, EPOCHS + 1)]


def test_a_missing_eval_folder_fails_before_training(tmp_path, fashion_subset):
    spec = _spec(tmp_path, fashion_subset)
    spec.write_text(spec.read_text().replace(f"{fashion_subset}/test", str(tmp_path / "no-such-folder")))
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r",
                           str(tmp_path / "r"), "--evaluate"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("kestrel: error: ")
    assert "no-such-folder" in proc.stderr and not (tmp_path / "r" / "weights").exists()


def test_the_launcher_passes_evaluate_to_every_rank():
    args = build_parser().parse_args(["train", "-e", "s.txt", "-r", "out", "--gpus", "2", "--evaluate"])
    assert "--evaluate" in rank_arguments(args)
    assert "--evaluate" not in rank_arguments(build_parser().parse_args(["train", "-e", "s.txt", "-r", "out"]))


@needs_horovod
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI's mpirun is not installed")
def test_under_mpirun_only_rank_0_evaluates_and_every_rank_exits(tmp_path, fashion_subset):
    """The MPIJob way (mpirun starts 2 ranks, each runs `kestrel train --evaluate`): rank 1 leaves after training
    while rank 0 evaluates; one evaluation reaches the API server and the job ends with 0."""
    spec = _spec(tmp_path, fashion_subset)
    spec.write_text(spec.read_text().replace(f"n_epochs: {EPOCHS}", "n_epochs: 1"))
    results = tmp_path / "results"
    cmd = ["mpirun", "-np", "2", "--bind-to", "none", "-map-by", "slot", "-x", "PATH", "-x", "KUBECONFIG",
           *[a for name in (*RESOURCE, "KESTREL_KEY") for a in ("-x", name)]]
    if os.getuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += [sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r", str(results),
            "--gpus", "0", "--num_processes", "2", "--evaluate"]  # CPU ranks (no GPU here: --gpus 2 would fail)
    with LoopbackApi() as api:
        api.responses[("GET", STATUS_PATH)] = (200, {"metadata": {"uid": "uid-7"}})
        env = _cluster_env(api, tmp_path)
        for name in list(env):  # a test run under some launcher must not make our ranks join it
            if name.startswith(("OMPI_", "HOROVOD_", "PMI_", "PMIX_")):
                del env[name]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        requests = list(api.requests)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "rank 0 of 2 (local rank 0), Horovod over MPI" in proc.stderr
    evaluations = [p for p in _patches(requests) if "top1Accuracy" in p]
    reported = json.loads((results / "evaluate" / "results.json").read_text())
    assert len(evaluations) == 1 and evaluations[0]["top1Accuracy"] == reported["top_1_accuracy"]
    assert reported["n_images"] == 80
