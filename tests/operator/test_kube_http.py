"""kube.KubeApi and the trainer's ClusterStatusReporter through the real kubernetes client, against a
loopback HTTP server: the exact method, path, content type and body each call sends."""

from __future__ import annotations

import logging

import pytest

from kestrel_operator.kube import KubeApi, load_client_config
from kestrel_trainer.report.cluster_status import ClusterStatusReporter
from tests.operator.loopback_api import LoopbackApi

NS_PATH = "/apis/kestrel.dev/v1alpha1/namespaces/ml/classificationtrains/r18"


@pytest.fixture
def server(tmp_path, monkeypatch):
    with LoopbackApi() as srv:
        monkeypatch.setenv("KUBECONFIG", str(srv.kubeconfig(tmp_path)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield srv


def test_kube_api_calls(server):
    api = KubeApi(load_client_config())
    server.responses[("GET", "/apis/kubeflow.org/v2beta1/namespaces/ml/mpijobs/j")] = (404, {"message": "nf"})
    assert api.get("kubeflow.org/v2beta1", "MPIJob", "ml", "j") is None
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ml"}, "data": {"a": "b"}}
    server.responses[("POST", "/api/v1/namespaces/ml/configmaps")] = (
        201, {**obj, "metadata": {**obj["metadata"], "resourceVersion": "42"}})
    assert api.create(obj) == "42"  # the created version: its watch event is known to be ours
    server.responses[("POST", "/api/v1/namespaces/ml/configmaps")] = (409, {"reason": "AlreadyExists"})
    assert api.create(obj) is False
    assert api.patch_status("kestrel.dev/v1alpha1", "ClassificationTrain", "ml", "r18", "u1", {"phase": "Running"})
    api.list("kubeflow.org/v2beta1", "MPIJob", "ml", "a=b,c=d")
    api.delete("kubeflow.org/v2beta1", "MPIJob", "ml", "j", uid="u9")

    reqs = server.requests
    assert reqs[1]["method"] == "POST" and reqs[1]["body"] == obj
    assert reqs[1]["authorization"] == "Bearer test-token"
    patch = reqs[3]
    assert (patch["method"], patch["path"]) == ("PATCH", NS_PATH + "/status")
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"] == {"status": {"phase": "Running"}}
    assert reqs[4]["query"] == "labelSelector=a%3Db%2Cc%3Dd"
    assert reqs[5]["method"] == "DELETE" and reqs[5]["body"]["preconditions"] == {"uid": "u9"}
    assert reqs[5]["body"]["propagationPolicy"] == "Background"


def test_kube_api_raises_on_server_errors(server):
    from kestrel_operator.kube import KubeError

    server.responses[("GET", "/api/v1/namespaces/ml/configmaps/c")] = (403, {"message": "forbidden"})
    with pytest.raises(KubeError, match="HTTP 403: forbidden"):
        KubeApi(load_client_config()).get("v1", "ConfigMap", "ml", "c")


def test_kube_api_lists_across_namespaces_patches_and_names_the_kind(server):
    api = KubeApi(load_client_config())
    server.responses[("GET", "/apis/kestrel.dev/v1alpha1/classificationtrains")] = (
        200, {"kind": "ClassificationTrainList", "apiVersion": "kestrel.dev/v1alpha1",
              "items": [{"metadata": {"name": "a", "namespace": "x"}}]})
    items = api.list("kestrel.dev/v1alpha1", "ClassificationTrain", "")
    assert items == [{"metadata": {"name": "a", "namespace": "x"}, "kind": "ClassificationTrain",
                      "apiVersion": "kestrel.dev/v1alpha1"}]
    api.list("v1", "Event", "ml", field_selector="involvedObject.name=p")
    assert server.requests[-1]["query"] == "fieldSelector=involvedObject.name%3Dp"
    assert api.patch("rbac.authorization.k8s.io/v1", "RoleBinding", "ml", "rb", {"subjects": []})
    req = server.requests[-1]
    assert (req["method"], req["path"], req["content_type"]) == (
        "PATCH", "/apis/rbac.authorization.k8s.io/v1/namespaces/ml/rolebindings/rb", "application/merge-patch+json")
    from kestrel_operator.kube import KubeError

    server.responses[("POST", "/apis/kubeflow.org/v2beta1/namespaces/ml/mpijobs")] = (404, {"message": "nf"})
    with pytest.raises(KubeError) as err:
        api.create({"apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob", "metadata": {"name": "j",
                                                                                         "namespace": "ml"}})
    assert (err.value.status, err.value.kind) == (404, "MPIJob")


def test_kube_api_without_a_server_raises_kube_error(tmp_path, monkeypatch):
    with LoopbackApi() as srv:
        config = srv.kubeconfig(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(config))  # the server is gone: connection refused
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    from kestrel_operator.kube import KubeError

    api = KubeApi(load_client_config(), timeout=2)
    api.client.configuration.retries = 0
    with pytest.raises(KubeError, match="no answer from the API server") as err:
        api.get("v1", "ConfigMap", "ml", "c")
    assert err.value.status == 0


ENV = {"KESTREL_RESOURCE_GROUP": "kestrel.dev", "KESTREL_RESOURCE_VERSION": "v1alpha1",
       "KESTREL_RESOURCE_PLURAL": "classificationtrains", "KESTREL_RESOURCE_NAME": "r18",
       "KESTREL_RESOURCE_NAMESPACE": "ml", "KESTREL_RESOURCE_UID": "u1", "KESTREL_RUN": "r18-g2"}


def test_reporter_from_env():
    assert ClusterStatusReporter.from_env({}) is None
    assert ClusterStatusReporter.from_env({k: v for k, v in ENV.items() if k != "KESTREL_RESOURCE_NAME"}) is None
    rep = ClusterStatusReporter.from_env(ENV)
    assert rep is not None and rep.path == NS_PATH + "/status"


def test_reporter_patches_progress(server):
    server.responses[("GET", NS_PATH + "/status")] = (200, {"metadata": {"uid": "u1"}})
    rep = ClusterStatusReporter.from_env(ENV)
    assert rep.report(3, 30, 0.52, 0.81, float("nan"), 0.79, "epoch 3/30") is True
    req = server.requests[-1]
    assert (req["method"], req["path"], req["content_type"]) == ("PATCH", NS_PATH + "/status",
                                                                 "application/merge-patch+json")
    progress = req["body"]["status"]["progress"]
    assert rep.report(4, 30, 0.5, 0.8, 0.5, 0.8) is True
    assert [r["method"] for r in server.requests] == ["GET", "PATCH", "PATCH"]  # identity checked once
    assert {k: progress[k] for k in ("epoch", "maxEpoch", "loss", "accuracy", "valLoss", "valAccuracy", "run")} == {
        "epoch": 3, "maxEpoch": 30, "loss": 0.52, "accuracy": 0.81, "valLoss": None, "valAccuracy": 0.79,
        "run": "r18-g2"}


def test_reporter_does_not_write_into_a_recreated_namesake(server, caplog):
    server.responses[("GET", NS_PATH + "/status")] = (200, {"metadata": {"uid": "someone-else"}})
    rep = ClusterStatusReporter.from_env(ENV)
    with caplog.at_level(logging.WARNING):
        assert rep.report(1, 2, 0.1, 0.2, None, None) is False
    assert [r["method"] for r in server.requests] == ["GET"] and "another resource" in caplog.text


def test_reporter_never_raises(server, caplog):
    server.responses[("GET", NS_PATH + "/status")] = (200, {"metadata": {"uid": "u1"}})
    server.responses[("PATCH", NS_PATH + "/status")] = (403, {"message": "forbidden"})
    rep = ClusterStatusReporter.from_env(ENV)
    with caplog.at_level(logging.WARNING):
        assert rep.report(1, 2, 0.1, 0.2, None, None) is False
        assert rep.report(2, 2, 0.1, 0.2, None, None) is False  # disabled after 403: no second request
    assert len([r for r in server.requests if r["method"] == "PATCH"]) == 1
    assert "HTTP 403" in caplog.text


def test_reporter_without_a_server_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    rep = ClusterStatusReporter.from_env(ENV)
    assert rep.report(1, 2, 0.1, 0.2, None, None) is False
