"""The rest of the user's flow for real, on the real node, after the 2-rank train (`trained` fixture):
ClassificationPrune (fromTrain) -> ClassificationTrain retrain (fromPrune) -> ClassificationExport (fromTrain of
the retrain), each `kubectl apply`-ed and run by the trainer image in real pods. Then, on the host, `kestrel
evaluate` reads the exported ONNX from the volume and gives the same top-1 as the retrained Keras model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import node as node_mod
from e2e import real_runs
from e2e.captures import capture
from tests.train.conftest import TINY_SPEC

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ONNX_PATH = "/results/export/fashion.onnx"


@pytest.fixture(scope="module", autouse=True)
def _real_mpi_operator(mpi_controller: str) -> None:
    if mpi_controller != "real":
        pytest.fail("the real-node runs need the real MPI Operator")


def _placed(ws: real_runs.Workspace, kind: str, name: str, spec: dict) -> dict:
    """A Prune/Export resource on the real node with the workspace's key, image and results claim."""
    return {
        "apiVersion": "kestrel.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": ws.namespace},
        "spec": {
            "keySecretRef": {"name": real_runs.KEY_SECRET, "key": "key"},
            "image": ws.image, "imagePullPolicy": "Never",
            "nodeSelector": dict(node_mod.NODE_SELECTOR), "tolerations": list(node_mod.NODE_TOLERATIONS),
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "backoffLimit": 0,
            **spec,
        },
    }


def _volumes(ws: real_runs.Workspace, name: str) -> dict:
    return {"data": {"claimName": real_runs.DATA_CLAIM, "mountPath": real_runs.DATA_MOUNT},
            "results": {"claimName": real_runs.RESULTS_CLAIM, "subPath": name, "mountPath": "/results"}}


def _evaluate(ws: real_runs.Workspace, model: Path, out: Path) -> dict:
    """`kestrel evaluate` on the host, on the test split of the same data the pods used."""
    spec = out / "spec.txt"
    out.mkdir(parents=True, exist_ok=True)
    spec.write_text(TINY_SPEC.format(data=ws.data_dir, epochs=1, mixup=0.0))
    env = {**os.environ, "KESTREL_KEY": ws.key}
    done = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "evaluate", "-e", str(spec), "-m",
                           str(model), "-r", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_prune_retrain_export_then_the_onnx_on_the_volume_scores_like_the_retrained_model(
        cluster: cl.ControlPlane, trained: dict, real_workspace: real_runs.Workspace, tmp_path: Path) -> None:
    ws = real_workspace
    train_name = trained["metadata"]["name"]

    prune = _placed(ws, "ClassificationPrune", "fashion-pruned", {
        "model": {"fromTrain": train_name},
        # A briefly trained model's filter norms sit close to their layer's maximum (docs/prune.md): 0.97 prunes.
        "pruningThreshold": 0.97, "minNumFilters": 8,
        "volumes": {"results": _volumes(ws, "fashion-pruned")["results"]},
    })
    pruned = real_runs.run_to_end(cluster, ws, prune, "Succeeded", timeout=420)
    capture(pruned, "prune-healthy")
    report = json.loads((ws.run_folder(pruned) / "pruned" / "prune_report.json").read_text())
    assert report["parameters"]["after"] < report["parameters"]["before"], report["parameters"]
    pruned_file = ws.run_folder(pruned) / "pruned" / "fashion-pruned.tlt"
    assert pruned_file.is_file() and not pruned_file.read_bytes().startswith(HDF5_MAGIC)  # encrypted

    retrain = real_runs.train_resource(ws, "fashion-retrain", epochs=1)
    retrain["spec"]["pretrainedModel"] = {"fromPrune": pruned["metadata"]["name"]}
    retrained = real_runs.run_to_end(cluster, ws, retrain, "Succeeded", timeout=600)
    assert retrained["status"].get("inputModelPath", "").endswith("fashion-pruned.tlt"), retrained["status"]
    retrained_model = ws.run_folder(retrained) / "weights" / "resnet_001.tlt"
    assert retrained_model.is_file(), sorted(ws.results_of("fashion-retrain").rglob("*"))

    export = _placed(ws, "ClassificationExport", "fashion-export", {
        "model": {"fromTrain": "fashion-retrain"},
        "experimentSpec": TINY_SPEC.format(data=real_runs.DATA_MOUNT, epochs=1, mixup=0.0),
        "dataType": "fp32", "outputPath": ONNX_PATH,
        "volumes": _volumes(ws, "fashion-export"),
    })
    exported = real_runs.run_to_end(cluster, ws, export, "Succeeded", timeout=420)
    onnx_file = ws.run_folder(exported) / "export" / "fashion.onnx"
    assert onnx_file.is_file(), ko.events_for(cluster, ws.namespace, "fashion-export")

    keras = _evaluate(ws, retrained_model, tmp_path / "keras")
    onnx = _evaluate(ws, onnx_file, tmp_path / "onnx")
    assert keras["top_1_accuracy"] == onnx["top_1_accuracy"], (keras, onnx)
    # The same images, one row per class in both confusion matrices.
    assert keras.get("confusion_matrix") == onnx.get("confusion_matrix")
