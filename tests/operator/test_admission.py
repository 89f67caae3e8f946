"""The admission webhook's check and handler: what `kubectl apply` of a bad resource is refused with."""

from __future__ import annotations

import kopf
import pytest

from kestrel_operator.handlers import kopf_handlers
from kestrel_operator.handlers.reconcile import Reconciler
from kestrel_operator.manifests.check import check_resource
from kestrel_operator.resources import InvalidSpec
from tests.operator.conftest import TRAIN_SPEC, prune_body, spec_with_parallelism, train_body
from tests.operator.fake_api import FakeApi

# Line 3 of the spec text misspells a field of model_config.
BAD_TEXT = TRAIN_SPEC.replace('  n_layers: 18\n', '  n_layerz: 18\n')


def test_a_good_resource_passes_with_its_gpu_mapping(settings):
    mapping = check_resource(train_body(gpus=16, numProcesses=16), settings, TRAIN_SPEC)
    assert (mapping.workers, mapping.slots_per_worker, mapping.gpus_per_pod) == (2, 8, 8)


def test_spec_text_error_names_the_line_and_field(settings):
    assert BAD_TEXT.splitlines()[2] == "  n_layerz: 18"
    with pytest.raises(InvalidSpec) as err:
        check_resource(train_body(experimentSpec=BAD_TEXT), settings, BAD_TEXT)
    assert "spec.experimentSpec:3" in err.value.message and "n_layerz" in err.value.message


@pytest.mark.parametrize("spec,text,needle", [
    # CEL checks gpus % numProcesses but cannot read the spec text: 8 GPUs / 4 ranks = 2 per rank needs 2 entries.
    ({"gpus": 8, "numProcesses": 4}, spec_with_parallelism([0.5, 0.3, 0.2]), "needs 2 entries, got 3"),
    ({"gpus": 4, "numProcesses": 4}, spec_with_parallelism([0.5, 0.5]), "has 2 entries but each rank gets 1 GPU"),
    # A rank larger than a node, with the node size from the operator's default (8), not the resource.
    ({"gpus": 16, "numProcesses": 1}, spec_with_parallelism([1 / 16] * 16), "a node has 8"),
])
def test_gpu_mapping_errors_cel_cannot_express(settings, spec, text, needle):
    with pytest.raises(InvalidSpec, match=needle):
        check_resource(train_body(experimentSpec=text, **spec), settings, text)


@pytest.fixture
def api(settings, monkeypatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setitem(kopf_handlers._state, "reconciler", Reconciler(api, settings))
    return api


def _validate(body, old=None, operation="CREATE"):
    from kestrel_operator.handlers.admission import validate_spec

    validate_spec(body=kopf.Body(body), old=kopf.Body(old) if old else None, operation=operation)


def test_handler_refuses_with_422_and_the_loader_message(api):
    with pytest.raises(kopf.AdmissionError) as err:
        _validate(train_body(experimentSpec=BAD_TEXT))
    assert err.value.code == 422
    assert str(err.value).startswith("ClassificationTrain default/resnet18 spec.experimentSpec:3:")


def test_handler_reads_a_referenced_configmap_and_allows_a_missing_one(api):
    body = train_body(experimentSpecRef={"name": "spec-cm"})
    del body["spec"]["experimentSpec"]
    _validate(body)  # ConfigMap not applied yet (GitOps order): admitted, the reconciler waits for it
    api.put({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "spec-cm"}, "data": {"spec.txt": BAD_TEXT}})
    with pytest.raises(kopf.AdmissionError, match="spec.experimentSpecRef:3"):
        _validate(body)


def test_unchanged_spec_updates_are_allowed_even_when_invalid(api):
    bad = train_body(experimentSpec=BAD_TEXT)
    relabelled = {**bad, "metadata": {**bad["metadata"], "labels": {"team": "a"}}}
    _validate(relabelled, old=bad, operation="UPDATE")
    with pytest.raises(kopf.AdmissionError):
        _validate(bad, old=train_body(), operation="UPDATE")


def test_refusal_lists_every_error(api):
    body = train_body(gpus=-1, numProcesses=0, schedulerName="Not_A_Name")
    with pytest.raises(kopf.AdmissionError) as err:
        _validate(body)
    assert str(err.value).split("; ") == [
        "spec.gpus: Invalid value: -1: gpus must be >= 0 (0: CPU only)",
        "spec.numProcesses: Invalid value: 0: numProcesses must be >= 1, or unset for one rank per GPU (1 when gpus "
        "is 0)",
        'spec.schedulerName: Invalid value: "Not_A_Name": not a valid Kubernetes object name',
    ]


def test_field_errors_and_generate_name(api):
    with pytest.raises(kopf.AdmissionError, match=r"spec.model"):
        _validate(prune_body(model={}))
    body = train_body()
    body["metadata"] = {"generateName": "run-", "namespace": "default"}
    _validate(body)
