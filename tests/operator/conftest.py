"""Fixtures for operator tests: settings, a valid training spec text, resource bodies."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kestrel_operator.handlers.reconcile import Reconciler
from kestrel_operator.settings import Settings
from tests.operator.fake_api import FakeApi

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "k8s"
CRDS = REPO / "crds"
# The MPI Operator v0.8.0 module's MPIJob CRD, verbatim (tests/operator/upstream/README.md)
UPSTREAM_MPIJOB_CRD = Path(__file__).resolve().parent / "upstream" / "kubeflow.org_mpijobs.yaml"
CHART = REPO / "charts" / "kestrel"

TRAIN_SPEC = """model_config {
  arch: "resnet"
  n_layers: 18
  input_image_size: "1,32,32"
}
train_config {
  train_dataset_path: "/data/train"
  val_dataset_path: "/data/val"
  optimizer { sgd { lr: 0.01 momentum: 0.9 } }
  lr_config { step { learning_rate: 0.1 step_size: 30 gamma: 0.1 } }
  batch_size_per_gpu: 32
  n_epochs: 12
}
"""


def spec_with_parallelism(fractions: list[float]) -> str:
    lines = "".join(f"  model_parallelism: {f}\n" for f in fractions)
    return TRAIN_SPEC.replace("  n_epochs: 12\n", "  n_epochs: 12\n" + lines)


def load_example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


@pytest.fixture
def settings() -> Settings:
    return Settings(default_image="kestrel-trainer:test", gpus_per_node=8)


def _body(kind: str, name: str, base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A custom resource of `kind` with a minimal valid spec, then the test's overrides."""
    spec = {**base, **copy.deepcopy(overrides)}
    return {"apiVersion": "kestrel.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "default"},
            "spec": spec}


def train_body(name: str = "resnet18", **spec: Any) -> dict[str, Any]:
    return _body("ClassificationTrain", name, {
        "experimentSpec": TRAIN_SPEC,
        "keySecretRef": {"name": "kestrel-key", "key": "key"},
        "gpus": 1,
        "volumes": {
            "data": {"claimName": "datasets", "subPath": "fashion-mnist", "mountPath": "/data"},
            "results": {"claimName": "results", "subPath": name, "mountPath": "/results"},
        },
    }, spec)


def prune_body(name: str = "pruned", **spec: Any) -> dict[str, Any]:
    return _body("ClassificationPrune", name, {
        "model": {"fromTrain": "resnet18"},
        "keySecretRef": {"name": "kestrel-key"},
        "volumes": {"results": {"claimName": "results", "subPath": name}},
    }, spec)


def export_body(name: str = "exported", **spec: Any) -> dict[str, Any]:
    return _body("ClassificationExport", name, {
        "model": {"path": "/results/pruned.tlt"},
        "keySecretRef": {"name": "kestrel-key"},
        "volumes": {"results": {"claimName": "results", "subPath": name}},
    }, spec)


@pytest.fixture
def api() -> FakeApi:
    """An in-memory API store (fake_api.py)."""
    return FakeApi()


@pytest.fixture
def rec(api, settings) -> Reconciler:
    return Reconciler(api, settings)
