"""The user's flow with no PVC at all, on the real node: data, checkpoints and models in object storage, and the
operator and trainer images pulled from a registry.

The module runs the way a platform team deploys: the operator is installed with `helm install oci://...` from the
session's registry (release.py: images and chart pushed by scripts/build_images.sh --push), its pod and every run's
pods pulled by the real node's containerd with an imagePullSecret (the session's own operator process is stopped
for the module). A real S3 server (versitygw, built from its Go module: `bash e2e/build.sh --versitygw`) runs in
the session's control-plane network namespace on the control plane's address, which the pods reach through the
node's default route. The dataset goes into the bucket with the trainer's own CLI (`kestrel dataset import ... --out s3://`),
the credentials into a Secret (from files: never in a process listing); the resources name the Secret in
spec.storage and keep their results in storage.resultsPath. Then: Train (2 CPU ranks) -> Prune (fromTrain) ->
retrain (fromPrune) -> Export (fromTrain), and `kestrel evaluate` on the host reads the exported model from s3://.
Faults: wrong credentials in the Secret; the server stopped while a run uploads its checkpoints, then restarted.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import node as node_mod
from e2e import real_runs, release
from e2e import registry as registry_mod
from e2e.captures import capture
from e2e.conftest import wait_until
from e2e.netns import NetNS
from kestrel_trainer.spec import contract
from tests.conftest import S3_TEST_ACCESS_KEY, S3_TEST_SECRET_KEY, S3Fixture, S3Server, versitygw_binary
from tests.strict_mode import STRICT_ENV, strict_mode
from tests.train.conftest import TINY_SPEC

pytestmark = pytest.mark.without_session_operator

BUCKET = "kestrel-e2e"
DATA = f"s3://{BUCKET}/fashion"
RESULTS = f"s3://{BUCKET}/results"
S3_SECRET = "s3-credentials"
BAD_SECRET = "s3-wrong-credentials"


@pytest.fixture(scope="module", autouse=True)
def _real_mpi_operator(mpi_controller: str) -> None:
    if mpi_controller != "real":
        pytest.fail("the real-node runs need the real MPI Operator")


@dataclass
class Bucket:
    namespace: str
    key: str
    pushed: release.Pushed  # the images the pods pull, the chart the operator came from
    node: node_mod.RealNode
    server: S3Server
    s3: S3Fixture  # an independent client (MinIO's SDK with the server's key), to look at what the pods wrote
    env: dict[str, str]  # the host's AWS_* environment for the trainer CLI

    def keys(self, prefix: str) -> list[str]:
        return self.s3.object_keys(prefix)


def _secret_from_files(cp: cl.ControlPlane, namespace: str, name: str, values: dict[str, str], folder: Path) -> None:
    """kubectl create secret from files: the values never appear on a command line."""
    args = []
    for key, value in values.items():
        path = folder / f"{name}-{key}"
        path.write_text(value)
        path.chmod(0o600)
        args.append(f"--from-file={key}={path}")
    try:
        cp.kubectl("create", "secret", "generic", name, "-n", namespace, *args)
    finally:
        for key in values:
            (folder / f"{name}-{key}").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def bucket(cluster: cl.ControlPlane, session_netns: NetNS, e2e_workdir: Path, real_node: node_mod.RealNode,
           registry: registry_mod.Registry, pushed: release.Pushed, helm_oci: release.Helm,
           kestrel_crds: list[str]) -> Iterator[Bucket]:  # noqa: ARG001 - the CRDs must be there
    binary = versitygw_binary()
    if not os.access(binary, os.X_OK):
        why = f"versitygw is not built ({binary}): run `bash e2e/build.sh --versitygw`"
        if strict_mode():
            pytest.fail(f"{STRICT_ENV}=1: {why}", pytrace=False)
        pytest.skip(why)
    root = e2e_workdir / "s3" / "root"
    root.mkdir(parents=True)
    # This process is inside the session's network namespace: the server listens on the control plane's address.
    server = S3Server(binary, root, host=session_netns.node_ip)
    server.start()
    cache = e2e_workdir / "s3" / "host-cache"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_TEST_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET_KEY,
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": server.endpoint, "KESTREL_CACHE_DIR": str(cache)}
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        env.pop(name, None)
    s3 = S3Fixture(server, BUCKET, env)
    s3.client.make_bucket(BUCKET)
    imported = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "dataset", "import", "fashion-mnist",
                               "--out", DATA, "--per-class", str(real_runs.PER_CLASS)],
                              env=env, capture_output=True, text=True, timeout=600)
    assert imported.returncode == 0, imported.stderr[-3000:]

    namespace = f"e2e-s3-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    wait_until(f"default ServiceAccount in {namespace}", lambda: cluster.exists("serviceaccount", "default",
                                                                                namespace))
    key = secrets.token_hex(16)
    folder = e2e_workdir / "s3"
    _secret_from_files(cluster, namespace, real_runs.KEY_SECRET, {"key": key}, folder)
    _secret_from_files(cluster, namespace, S3_SECRET, {"AWS_ACCESS_KEY_ID": S3_TEST_ACCESS_KEY,
                                                        "AWS_SECRET_ACCESS_KEY": S3_TEST_SECRET_KEY}, folder)
    _secret_from_files(cluster, namespace, BAD_SECRET, {"AWS_ACCESS_KEY_ID": S3_TEST_ACCESS_KEY,
                                                         "AWS_SECRET_ACCESS_KEY": "not-the-secret-" + key[:8]}, folder)
    release.pull_secret(cluster, namespace, release.PULL_SECRET, registry.docker_config_json(), folder)
    chart = f"s3-{uuid.uuid4().hex[:6]}"
    release.install_chart(cluster, registry, pushed, helm_oci, chart, namespace, namespace, folder)
    b = Bucket(namespace=namespace, key=key, pushed=pushed, node=real_node, server=server, s3=s3, env=env)
    # The chart's webhook answers once kube-proxy routes its Service: a server-side dry run until it does.
    dry_run = _train(b, "webhook-check")
    release.apply_once_the_webhook_answers(cluster, dry_run, dry_run=True)
    yield b
    helm_oci("uninstall", chart, "-n", namespace, "--wait", check=False)
    server.stop()


def _storage(b: Bucket, secret: str = S3_SECRET) -> dict:
    return {"s3": {"endpoint": b.server.endpoint, "region": "us-east-1", "secretRef": {"name": secret}},
            "resultsPath": RESULTS}


def _resource(b: Bucket, kind: str, name: str, spec: dict, secret: str = S3_SECRET) -> dict:
    """A resource as a user writes it with no volumes: spec.storage, the key Secret, pods on the real node."""
    return {
        "apiVersion": "kestrel.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": b.namespace},
        "spec": {
            "keySecretRef": {"name": real_runs.KEY_SECRET, "key": "key"},
            "storage": _storage(b, secret),
            # No spec.image: the chart's trainer image (its repository, tag = the chart's appVersion), pulled.
            "imagePullPolicy": "IfNotPresent", "imagePullSecrets": [{"name": release.PULL_SECRET}],
            "nodeSelector": dict(node_mod.NODE_SELECTOR), "tolerations": list(node_mod.NODE_TOLERATIONS),
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
            "backoffLimit": 0,
            **spec,
        },
    }


def _train(b: Bucket, name: str, epochs: int = real_runs.EPOCHS, processes: int = 2,
           secret: str = S3_SECRET) -> dict:
    return _resource(b, "ClassificationTrain", name, {
        "experimentSpec": TINY_SPEC.format(data=DATA, epochs=epochs, mixup=0.0), "gpus": 0,
        "numProcesses": processes}, secret)


def _run(cp: cl.ControlPlane, b: Bucket, resource: dict, wanted: str, timeout: float = 900) -> dict:
    name = resource["metadata"]["name"]
    cp.apply(resource)
    try:
        final = ko.wait_phase(cp, resource["kind"], name, b.namespace, wanted, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- pods ---\n{real_runs.pod_logs(cp, b.namespace)}") from None
    capture(final, f"s3-{name}")
    return final


def _key(url: str) -> str:
    assert url.startswith(f"s3://{BUCKET}/"), url
    return url[len(f"s3://{BUCKET}/"):]


def _kestrel(b: Bucket, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", *args],
                          env={**b.env, "KESTREL_KEY": b.key}, capture_output=True, text=True, timeout=timeout)


def _kestrel_free_keys(root: Path, prefix: str) -> list[str]:
    """The .tlt objects under `prefix`, read from the server's own folder (versitygw's posix backend keeps an object
    as a file bucket/key; uploads in progress live elsewhere) while the server is stopped."""
    folder = root / BUCKET / prefix
    return sorted(p.name for p in folder.glob("*.tlt")) if folder.is_dir() else []


def _no_pvc(cp: cl.ControlPlane, b: Bucket) -> None:
    assert cp.get("persistentvolumeclaims", namespace=b.namespace)["items"] == []
    for pod in cp.get("pods", namespace=b.namespace)["items"]:
        assert not any("persistentVolumeClaim" in v for v in pod["spec"].get("volumes", [])), pod["metadata"]["name"]


def test_no_pvc_train_prune_retrain_export_from_the_bucket_then_evaluate_on_the_host(
        cluster: cl.ControlPlane, bucket: Bucket, tmp_path: Path) -> None:
    b = bucket
    t0 = time.monotonic()
    trained = _run(cluster, b, _train(b, "fashion-s3"), "Succeeded")
    run_url = trained["status"]["runPath"]
    assert run_url.startswith(f"{RESULTS}/runs/"), trained["status"]
    keys = b.keys(_key(run_url) + "/")
    rel = {k[len(_key(run_url)) + 1:] for k in keys}
    assert {"weights/resnet_001.tlt", "weights/resnet_002.tlt", "training.csv", "status.json"} <= rel, sorted(rel)
    assert trained["status"]["outputPath"] == f"{run_url}/weights/resnet_002.tlt"
    _no_pvc(cluster, b)  # the run's pods are still there (cleanPodPolicy Running keeps finished ones)
    times = {"train": time.monotonic() - t0}

    t0 = time.monotonic()
    pruned = _run(cluster, b, _resource(b, "ClassificationPrune", "fashion-s3-pruned", {
        "model": {"fromTrain": "fashion-s3"}, "pruningThreshold": 0.97, "minNumFilters": 8}), "Succeeded")
    assert pruned["status"]["inputModelPath"] == trained["status"]["outputPath"]
    pruned_url = pruned["status"]["outputPath"]
    assert pruned_url == f"{pruned['status']['runPath']}/pruned/fashion-s3-pruned.tlt", pruned["status"]
    report = json.loads(b.s3.get(_key(pruned["status"]["runPath"]) + "/pruned/prune_report.json"))
    assert report["parameters"]["after"] < report["parameters"]["before"], report["parameters"]
    times["prune"] = time.monotonic() - t0

    t0 = time.monotonic()
    retrain = _train(b, "fashion-s3-retrain", epochs=1)
    retrain["spec"]["pretrainedModel"] = {"fromPrune": "fashion-s3-pruned"}
    retrained = _run(cluster, b, retrain, "Succeeded")
    assert retrained["status"]["inputModelPath"] == pruned_url
    assert _key(retrained["status"]["outputPath"]) in b.keys(_key(retrained["status"]["runPath"]) + "/")
    times["retrain"] = time.monotonic() - t0

    t0 = time.monotonic()
    exported = _run(cluster, b, _resource(b, "ClassificationExport", "fashion-s3-export", {
        "model": {"fromTrain": "fashion-s3-retrain"},
        "experimentSpec": TINY_SPEC.format(data=DATA, epochs=1, mixup=0.0),
        "dataType": "fp32", "outputPath": f"{RESULTS}/export/fashion.onnx"}), "Succeeded")
    onnx_url = exported["status"]["outputPath"]
    assert onnx_url == f"{exported['status']['runPath']}/export/fashion.onnx", exported["status"]
    assert _key(onnx_url) in b.keys(_key(exported["status"]["runPath"]) + "/")
    times["export"] = time.monotonic() - t0
    _no_pvc(cluster, b)

    # The user's check on a workstation: evaluate the exported model straight from the bucket, and the retrained
    # Keras checkpoint it was exported from (also from the bucket): the same top-1 on the same test images.
    results = {}
    for what, url in (("onnx", onnx_url), ("keras", retrained["status"]["outputPath"])):
        spec = tmp_path / f"spec-{what}.txt"
        spec.write_text(TINY_SPEC.format(data=DATA, epochs=1, mixup=0.0))
        done = _kestrel(b, "evaluate", "-e", str(spec), "-m", url, "-r", str(tmp_path / what))
        assert done.returncode == 0, done.stderr[-3000:]
        results[what] = json.loads((tmp_path / what / "results.json").read_text())
    assert results["onnx"]["top_1_accuracy"] == results["keras"]["top_1_accuracy"], results
    assert results["onnx"].get("confusion_matrix") == results["keras"].get("confusion_matrix")
    # Not asserted above chance (0.1): 2 epochs on 160 images of 16x16 pixels, pruned, 1 retrain epoch, is not a
    # model that learned (the PVC chain's runs are the same size); the measured value is printed.
    # The operator and every run's pods ran from images the node pulled from the registry with the pull Secret.
    assert release.operator_pod(cluster, b.namespace, b.node.name)["spec"]["containers"][0]["image"] == \
        b.pushed.operator
    runs = [p for p in cluster.get("pods", namespace=b.namespace)["items"] if not release.is_operator_pod(p)]
    images = {c["image"] for p in runs for c in p["spec"].get("initContainers", []) + p["spec"]["containers"]}
    assert runs and images == {b.pushed.trainer}, images
    assert {b.pushed.trainer, b.pushed.operator} <= b.node.image_refs()
    sys.stderr.write(f"\n[s3] phase times (s): {json.dumps({k: round(v) for k, v in times.items()})}, "
                     f"top-1 of the exported ONNX read from the bucket {results['onnx']['top_1_accuracy']:.3f}\n")


def test_wrong_credentials_fail_with_one_line_naming_the_bucket_and_an_event(
        cluster: cl.ControlPlane, bucket: Bucket) -> None:
    b = bucket
    failed = _run(cluster, b, _train(b, "fashion-s3-badkey", secret=BAD_SECRET), "Failed", timeout=420)
    status = failed["status"]
    message = status.get("message") or ""
    assert status.get("reason") == "TrainerFailed", status
    assert BUCKET in message and "credentials" in message, message
    assert "\n" not in message and "Traceback" not in message, message
    assert "not-the-secret" not in json.dumps(failed), "the secret's value reached the resource"
    events = ko.events_for(cluster, b.namespace, "fashion-s3-badkey")
    assert any(e["type"] == "Warning" and BUCKET in e["message"] for e in events), events
    # not retried: a trainer error is the user's to fix
    assert len([r for r in status.get("runs", []) if r.get("attempt", 1) > 1]) == 0, status


def test_server_stopped_while_the_run_uploads_then_restarted_the_run_finishes_with_whole_checkpoints(
        cluster: cl.ControlPlane, bucket: Bucket) -> None:
    b = bucket
    epochs = 3
    resource = _train(b, "fashion-s3-outage", epochs=epochs, processes=1)
    cluster.apply(resource)
    folder = wait_until("the run's folder in status", lambda: (ko.get_resource(
        cluster, "ClassificationTrain", "fashion-s3-outage", b.namespace).get("status") or {}).get("runPath"),
        timeout=120)
    first = _key(folder) + "/weights/resnet_001.tlt"
    wait_until("the first checkpoint in the bucket", lambda: first in b.keys(_key(folder) + "/weights/"),
               timeout=900, interval=1)
    b.server.stop()
    stopped = time.monotonic()
    at_stop = _kestrel_free_keys(b.server.root, _key(folder) + "/weights/")
    # Down until rank 0 reported the next epoch done (status.progress): that epoch's checkpoint was written and its
    # upload met the stopped server.
    def epoch_done() -> bool:
        status = ko.get_resource(cluster, "ClassificationTrain", "fashion-s3-outage", b.namespace).get("status") or {}
        return int((status.get(contract.PROGRESS) or {}).get(contract.PROGRESS_EPOCH) or 0) >= 2

    wait_until("epoch 2 done while the server is stopped", epoch_done, timeout=900, interval=2)
    time.sleep(10)
    b.server.start()
    down = time.monotonic() - stopped
    final = ko.wait_phase(cluster, "ClassificationTrain", "fashion-s3-outage", b.namespace, "Succeeded",
                          timeout=900)
    weights = [k for k in b.keys(_key(folder) + "/weights/") if k.endswith(".tlt")]
    assert [k.rsplit("/", 1)[1] for k in weights] == [f"resnet_{e:03d}.tlt" for e in range(1, epochs + 1)], weights
    # Every checkpoint object is whole: each one loads (a cut object would fail to decrypt or parse).
    for key in weights:
        info = _kestrel(b, "model", "info", "-m", f"s3://{BUCKET}/{key}", "--brief", timeout=300)
        assert info.returncode == 0, (key, info.stderr[-2000:])
    assert final["status"].get("attempt", 1) == 1, final["status"]  # the trainer's uploader rode it out
    # ... and at least one checkpoint went up only after the restart: an upload did meet the stopped server.
    assert len(at_stop) < epochs, at_stop
    sys.stderr.write(f"\n[s3] server down {down:.0f} s during the run; {len(weights)} whole checkpoints\n")
