"""Our CRDs: structural, generated from the code (no drift), defaults valid, examples valid against them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from kestrel_operator.resources.crd import all_crds, crd
from kestrel_operator.resources.types import KINDS
from tests.operator.conftest import CHART, CRDS, EXAMPLES, REPO, UPSTREAM_MPIJOB_CRD
from tests.operator.k8s_schema import preserve_unknown_paths, structural_errors, validate


def _file(plural, folder=CRDS):
    return yaml.safe_load((folder / f"{plural}.yaml").read_text())


def _schema(doc):
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("folder", [CRDS, CHART / "crds"], ids=["crds", "chart-crds"])
@pytest.mark.parametrize("kind,plural", sorted(KINDS.items()))
def test_crd_file_is_the_generated_one(kind, plural, folder):
    assert _file(plural, folder) == crd(kind), (
        f"{folder.relative_to(REPO)}/{plural}.yaml is stale: regenerate with scripts/gen_crds.sh")


def test_chart_has_exactly_our_crds():
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(f"{p}.yaml" for p in KINDS.values())


@pytest.mark.parametrize("doc", all_crds(), ids=lambda d: d["metadata"]["name"])
def test_structural(doc):
    schema = _schema(doc)
    assert structural_errors(schema) == []
    # Only the two core/v1 types passed through to the pods as they are (the API server checks them when the
    # MPI Operator creates the pods; the operator checks their top-level keys).
    assert preserve_unknown_paths(schema) == [".spec.env.items.valueFrom", ".spec.affinity"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert doc["spec"]["names"]["shortNames"]
    cols = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Age"} <= cols


def test_train_printer_columns():
    cols = {c["name"]: c["jsonPath"] for c in crd("ClassificationTrain")["spec"]["versions"][0][
        "additionalPrinterColumns"]}
    assert cols["Epoch"] == ".status.progress.epoch"
    assert cols["Max"] == ".status.progress.maxEpoch"
    assert cols["Val Acc"] == ".status.progress.valAccuracy"


def test_every_field_has_a_description():
    def walk(schema, path):
        missing = []
        for name, sub in (schema.get("properties") or {}).items():
            if path.startswith(".spec") and "description" not in sub:
                missing.append(f"{path}.{name}")
            missing += walk(sub, f"{path}.{name}")
        if isinstance(schema.get("items"), dict):
            missing += walk(schema["items"], path + "[]")
        return missing

    for doc in all_crds():
        assert walk(_schema(doc), "") == []


def test_cel_rules_for_cross_field_values():
    rules = {kind: [r["rule"] for r in _schema(crd(kind))["properties"]["spec"]["x-kubernetes-validations"]]
             for kind in KINDS}
    assert any("self.gpus % self.numProcesses == 0" in r for r in rules["ClassificationTrain"])
    assert "has(self.experimentSpec) != has(self.experimentSpecRef)" in rules["ClassificationTrain"]
    assert any("int8" in r for r in rules["ClassificationExport"])
    model = _schema(crd("ClassificationPrune"))["properties"]["spec"]["properties"]["model"]
    assert "has(self.fromTrain)" in model["x-kubernetes-validations"][0]["rule"]


def test_status_has_what_the_operator_and_trainer_write():
    from kestrel_operator.status.compute import _base

    status = _schema(crd("ClassificationTrain"))["properties"]["status"]["properties"]
    assert set(_base(1, "Pending", "r", "m")) | {"conditions", "progress"} <= set(status)
    from kestrel_trainer.report.cluster_status import ClusterStatusReporter

    body = ClusterStatusReporter("g", "v", "p", "n", "ns", run="r").body(1, 2, 0.5, 0.9, 0.6, 0.8, "ok")
    assert validate(body["status"], _schema(crd("ClassificationTrain"))["properties"]["status"], ".status") == []


@pytest.mark.parametrize("name", ["train.yaml", "prune.yaml", "retrain.yaml", "export.yaml",
                                  "../gitops/retraining/train.yaml", "../gitops/retraining/export.yaml"])
def test_examples_validate_against_crds(name):
    for doc in yaml.safe_load_all((EXAMPLES / name).read_text()):
        schema = _schema(crd(doc["kind"]))
        assert validate(doc, schema) == []


def test_the_gitops_example_renders_with_its_gate_and_the_export_reads_the_trains_run(settings):
    """examples/gitops/retraining: the train evaluates at its end (the gate) and the export reads the model of the
    train's run folder."""
    from kestrel_operator.render import Renderer

    docs = [d for f in ("train.yaml", "export.yaml")
            for d in yaml.safe_load_all((EXAMPLES.parent / "gitops" / "retraining" / f).read_text())]
    renderer = Renderer(docs, settings, namespace="ml")
    train, export = (renderer.plan(d) for d in renderer.docs)
    assert train.resource.promotion.minimum == 0.90 and train.resource.run.keep_runs == 3
    job = train.objects[-1]
    args = job["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"]
    assert args[-1] == "--evaluate" and f"/results/runs/{train.resource.meta.run_hash}" in args
    assert export.model.path == f"/kestrel/model-source/runs/{train.resource.meta.run_hash}/weights/resnet_030.tlt"


def test_upstream_mpijob_crd_is_the_mpi_operator_modules_own_file():
    """The MPIJob CRD the unit tests validate against is the MPI Operator v0.8.0 Go module's file, unchanged (e2e
    applies the module's file itself). build.sh finds it in the module cache (downloading it, checked against
    go.sum, when absent) and refuses a go.mod pinning another version than it builds."""
    proc = subprocess.run(["bash", str(REPO / "e2e" / "build.sh"), "--mpijob-crd"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    module_file = Path(proc.stdout.strip().splitlines()[-1])
    assert module_file.name == UPSTREAM_MPIJOB_CRD.name and "mpi-operator@v0.8.0" in str(module_file)
    assert module_file.read_bytes() == UPSTREAM_MPIJOB_CRD.read_bytes(), (
        f"{UPSTREAM_MPIJOB_CRD.relative_to(REPO)} differs from {module_file}: copy it again (tests/operator/upstream)")


def test_upstream_mpijob_crd_is_structural_and_types_the_pod_templates():
    schema = _schema(yaml.safe_load(UPSTREAM_MPIJOB_CRD.read_text()))
    assert structural_errors(schema) == []
    template = schema["properties"]["spec"]["properties"]["mpiReplicaSpecs"]["additionalProperties"]["properties"][
        "template"]
    assert {"metadata", "spec"} <= set(template["properties"])
    assert "containers" in template["properties"]["spec"]["properties"]
