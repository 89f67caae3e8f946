"""The submit client (`kubectl kestrel`, kestrel_operator/client): flags -> resource, the webhook's check before
anything is sent, following a run to its exit code, and the pod log stream over real HTTP. The client against the
real API server and node is e2e/test_client.py."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kestrel_operator.client import KestrelClient, api, build, cli
from kestrel_operator.client.follow import RunView, progress_line
from kestrel_operator.kube import KubeApi, load_client_config
from kestrel_operator.resources import InvalidSpec
from tests.operator.conftest import TRAIN_SPEC
from tests.operator.fake_api import FakeApi
from tests.terminal import read_until_closed

CPU_SPEC = TRAIN_SPEC  # /data/train, /data/val: the default data mount


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "Fashion_ResNet18.txt"
    path.write_text(CPU_SPEC)
    return path


class ScriptedApi(FakeApi):
    """FakeApi whose ClassificationTrain moves through `statuses`, one per read from the main thread (the first is
    the read after creation, none yet), with launcher pods whose logs are `logs`."""

    def __init__(self, statuses: list[dict[str, Any]], logs: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.statuses = [{}, *statuses]
        self.logs = logs

    def get(self, api_version, kind, namespace, name):
        obj = self.objects.get((kind, namespace, name))
        if obj is not None and kind == "ClassificationTrain" and self.statuses and \
                threading.current_thread() is threading.main_thread():
            status = self.statuses.pop(0)
            if status == "deleted":
                del self.objects[(kind, namespace, name)]
            else:
                obj["status"] = {"observedGeneration": obj["metadata"]["generation"], **status}
        return super().get(api_version, kind, namespace, name)

    def pod_log(self, namespace, name, container="", follow=False, tail_lines=None):
        yield from self.logs


@pytest.fixture
def fake(monkeypatch):
    """Run cli.main against a ScriptedApi: `use(statuses, logs)` returns the api."""
    monkeypatch.setattr(api, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(cli, "LOG_DRAIN_SECONDS", 2.0)
    holder: dict[str, Any] = {}

    def use(statuses=(), logs=()):
        holder["api"] = ScriptedApi(list(statuses), tuple(logs))
        return holder["api"]

    monkeypatch.setattr(cli, "KestrelClient", lambda namespace=None: KestrelClient(namespace or "ml",
                                                                                      api=holder["api"]))
    return use


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_flags_become_the_resource_and_pass_the_webhooks_check(spec_file):
    client = KestrelClient("ml", api=FakeApi())
    sub = client.submission("train", str(spec_file), gpus=0, num_processes=2, data_pvc="fashion-data",
                            results_pvc="results/runs-a", image="reg/kestrel:1", env=(("MLFLOW_TRACKING_URI", "x"),),
                            overrides={"spec": {"shmSize": "1Gi", "keySecretRef": {"name": "k2"}}})
    body = build.resource(sub)
    assert body["metadata"] == {"name": "fashion-resnet18", "namespace": "ml"}  # the name from the file's
    spec = body["spec"]
    assert spec["experimentSpec"] == CPU_SPEC
    assert (spec["gpus"], spec["numProcesses"], spec["image"]) == (0, 2, "reg/kestrel:1")
    assert spec["volumes"] == {"data": {"claimName": "fashion-data"},
                               "results": {"claimName": "results", "subPath": "runs-a"}}
    assert spec["keySecretRef"] == {"name": "k2", "key": "key"} and spec["shmSize"] == "1Gi"  # merged over
    assert spec["env"] == [{"name": "MLFLOW_TRACKING_URI", "value": "x"}]
    build.check(body, str(spec_file))  # the admission webhook's own check passes

    prune = build.resource(client.submission("prune", None, "small", from_train="fashion", results_pvc="results",
                                             pruning_threshold=0.5))
    assert prune["kind"] == "ClassificationPrune" and prune["spec"]["model"] == {"fromTrain": "fashion"}
    assert "experimentSpec" not in prune["spec"] and prune["spec"]["pruningThreshold"] == 0.5
    build.check(prune)
    s3 = build.resource(client.submission("train", str(spec_file), "s3run", s3_endpoint="http://minio:9000",
                                          s3_secret="creds", results_path="s3://runs/a", data_pvc="fashion-data"))
    assert s3["spec"]["storage"] == {"s3": {"endpoint": "http://minio:9000", "secretRef": {"name": "creds"}},
                                     "resultsPath": "s3://runs/a"}
    build.check(s3)


def test_a_bad_request_names_the_field_its_flag_and_the_spec_files_line(spec_file, tmp_path):
    client = KestrelClient("ml", api=FakeApi())
    body = build.resource(client.submission("train", str(spec_file), gpus=4, num_processes=3,
                                            data_pvc="d", results_pvc="r"))
    with pytest.raises(InvalidSpec) as err:
        build.check(body, str(spec_file))
    assert "spec.numProcesses: Invalid value: 3" in err.value.message and "(--num-processes)" in err.value.message
    typo = tmp_path / "typo.txt"
    typo.write_text(CPU_SPEC.replace("n_epochs: 12", "n_epoch: 12"))
    body = build.resource(client.submission("train", str(typo), gpus=0, data_pvc="d", results_pvc="r"))
    with pytest.raises(InvalidSpec) as err:
        build.check(body, str(typo))
    assert err.value.message.startswith(f"{typo}:") and "n_epoch" in err.value.message, err.value.message
    with pytest.raises(InvalidSpec, match="needs its spec file"):
        client.submission("train", None, "x")
    with pytest.raises(InvalidSpec, match="cannot read the spec file"):
        client.submission("train", str(tmp_path / "missing.txt"))
    with pytest.raises(InvalidSpec, match="unknown kind"):
        build.kind_of("evaluate")


def test_submit_follows_to_succeeded_exit_0_with_progress_eta_and_the_log(fake, capsys, spec_file):
    fake(statuses=[
        {"phase": "Pending", "reason": "MPIJobCreated", "message": "waiting for pods", "mpiJobName": "j"},
        {"phase": "Running", "reason": "MPIJobRunning", "mpiJobName": "j",
         "progress": {"epoch": 1, "maxEpoch": 3, "percent": 33, "eta": "1m4s", "loss": 1.5, "valAccuracy": 0.5}},
        {"phase": "Running", "reason": "MPIJobRunning", "mpiJobName": "j",
         "progress": {"epoch": 2, "maxEpoch": 3, "percent": 67, "eta": "31s", "loss": 1.2, "valAccuracy": 0.6}},
        {"phase": "Succeeded", "reason": "Promoted", "message": "promoted", "outputPath": "/results/w/r_003.tlt",
         "progress": {"epoch": 3, "maxEpoch": 3, "percent": 100, "eta": "0s", "loss": 1.0, "valAccuracy": 0.7,
                      "top1Accuracy": 0.71, "topKAccuracy": 0.95, "topK": 3}},
    ])
    code, out, err = run(capsys, "submit", "train", "-e", str(spec_file), "--gpus", "0", "--data-pvc", "d",
                         "--results-pvc", "r", "-n", "team")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "classificationtrain.kestrel.dev/fashion-resnet18 created in namespace team"
    assert "fashion-resnet18: Pending (MPIJobCreated): waiting for pods" in lines
    assert "fashion-resnet18: epoch 1/3 (33%), ETA 1m4s, loss 1.5000, val_acc 0.5000" in lines
    assert "fashion-resnet18: epoch 2/3 (67%), ETA 31s, loss 1.2000, val_acc 0.6000" in lines
    assert lines[-1] == ("fashion-resnet18: Succeeded: epoch 3/3 (100%), ETA 0s, loss 1.0000, val_acc 0.7000; "
                         "top-1 0.7100, top-3 0.9500; output /results/w/r_003.tlt")


def test_failed_run_exits_1_with_the_trainer_line_and_streams_the_launcher_log(fake, capsys, spec_file):
    api_ = fake(statuses=[
        {"phase": "Running", "reason": "MPIJobRunning", "mpiJobName": "j"},
        {"phase": "Running", "reason": "MPIJobRunning", "mpiJobName": "j"},
        {"phase": "Failed", "reason": "TrainerFailed", "mpiJobName": "j",
         "message": "kestrel: error: dataset folder not found: /data/train"}],
        logs=("starting", "kestrel: error: dataset folder not found: /data/train"))
    api_.put({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "j-launcher-abcde", "namespace": "ml", "uid": "p1", "labels": {
            api.JOB_NAME_LABEL: "j", api.JOB_ROLE_LABEL: "launcher"}},
        "status": {"containerStatuses": [{"name": "launcher", "state": {"terminated": {"exitCode": 1}}}]}})
    code, out, err = run(capsys, "submit", "train", "-e", str(spec_file), "--name", "nodata", "--gpus", "0",
                         "--data-pvc", "d", "--results-pvc", "r")
    assert code == 1, (out, err)
    assert err.strip().splitlines()[-1] == ("nodata: Failed (TrainerFailed): kestrel: error: dataset folder not "
                                            "found: /data/train")
    assert "kestrel: error: dataset folder not found: /data/train" in out.splitlines()  # the streamed log line
    code, out, _ = run(capsys, "logs", "train/nodata")
    assert code == 0 and out.splitlines() == ["starting", "kestrel: error: dataset folder not found: /data/train"]


def test_exit_2_on_bad_requests_and_invalid_spec_3_on_timeout_1_when_deleted(fake, capsys, spec_file):
    flags = ["-e", str(spec_file), "--gpus", "0", "--data-pvc", "d", "--results-pvc", "r"]
    api_ = fake()
    api_.fail("create", "ClassificationTrain", 422)
    code, _, err = run(capsys, "submit", "train", *flags)
    assert code == 2 and err.startswith("kubectl-kestrel: error: the API server refused ClassificationTrain ml/")
    assert len(err.splitlines()) == 1
    code, _, err = run(capsys, "submit", "train", *flags, "--no-follow")
    assert code == 0, err
    code, _, err = run(capsys, "submit", "train", *flags)  # the same name again
    assert code == 2 and "already exists in namespace ml" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "submit", "train", *flags, "--name", "n2", "--num-processes", "0")
    assert code == 2 and "spec.numProcesses" in err and "(--num-processes)" in err
    with pytest.raises(SystemExit) as bad_flag:  # argparse: usage error, exit 2
        cli.main(["submit", "train", "--gpus", "two"])
    assert bad_flag.value.code == 2
    capsys.readouterr()

    fake(statuses=[{"phase": "Failed", "reason": "InvalidSpec", "message": "spec.gpus: bad (fix the resource)"}])
    run(capsys, "submit", "train", *flags, "--no-follow")
    code, _, err = run(capsys, "wait", "fashion-resnet18")
    assert code == 2 and "InvalidSpec" in err
    fake(statuses=[{"phase": "Running", "reason": "MPIJobRunning"}] * 1000)
    run(capsys, "submit", "train", *flags, "--no-follow")
    code, _, err = run(capsys, "wait", "fashion-resnet18", "--timeout", "0.2s")
    assert code == 3 and "has not finished after 0.2 s" in err
    fake(statuses=[{"phase": "Running", "reason": "MPIJobRunning"}, "deleted"])
    run(capsys, "submit", "train", *flags, "--no-follow")
    code, _, err = run(capsys, "wait", "fashion-resnet18")
    assert code == 1 and "the resource was deleted while it was followed" in err
    code, _, err = run(capsys, "status", "nothere")
    assert code == 2 and "no Classification run named nothere in namespace ml" in err


def test_ctrl_c_stops_following_not_the_run(fake, capsys, spec_file, monkeypatch):
    api_ = fake(statuses=[{"phase": "Running", "reason": "MPIJobRunning"}] * 1000)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(KestrelClient, "wait", interrupted)
    code, _, err = run(capsys, "submit", "train", "-e", str(spec_file), "--gpus", "0", "--data-pvc", "d",
                       "--results-pvc", "r")
    assert code == 130
    assert "the run goes on. Follow it again with: kubectl kestrel wait train/fashion-resnet18 -n ml --follow" in err
    assert api_.of_kind("ClassificationTrain") and not api_.deletes


def test_list_status_delete(fake, capsys, spec_file):
    fake(statuses=[{"phase": "Running", "reason": "MPIJobRunning", "mpiJobName": "j",
                    "progress": {"epoch": 2, "maxEpoch": 4, "percent": 50, "eta": "2m"}}] * 10)
    run(capsys, "submit", "train", "-e", str(spec_file), "--gpus", "0", "--data-pvc", "d", "--results-pvc", "r",
        "--no-follow")
    code, out, _ = run(capsys, "status", "fashion-resnet18", "-o", "json")
    assert code == 0 and json.loads(out)["progress"]["eta"] == "2m"
    code, out, _ = run(capsys, "list")
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "PHASE", "PROGRESS", "ETA", "REASON"]
    assert out.splitlines()[1].split() == ["train/fashion-resnet18", "Running", "2/4", "50%", "2m", "MPIJobRunning"]
    code, out, _ = run(capsys, "status", "train/fashion-resnet18")
    assert code == 0 and "Progress:    epoch 2/4 (50%), ETA 2m" in out, out
    code, out, _ = run(capsys, "delete", "ctrain/fashion-resnet18")
    assert code == 0 and "deleted" in out
    code, _, err = run(capsys, "delete", "fashion-resnet18")
    assert code == 2 and "no Classification run named" in err


def test_plain_lines_and_the_terminal_bar():
    progress = {"epoch": 2, "maxEpoch": 5, "percent": 40, "eta": "1m30s", "loss": 0.5123, "accuracy": 0.81}
    assert progress_line(progress) == "epoch 2/5 (40%), ETA 1m30s, loss 0.5123, acc 0.8100"
    plain = io.StringIO()
    view = RunView(plain, "r", interval=3600)
    view.update({"status": {"phase": "Running", "progress": progress}})
    view.update({"status": {"phase": "Running", "progress": {**progress, "percent": 45, "eta": "1m20s"}}})
    view.update({"status": {"phase": "Running", "progress": {**progress, "epoch": 3, "percent": 60}}})
    # the same epoch within the interval: no second line; a new epoch always gets one
    assert plain.getvalue().splitlines() == ["r: Running", "r: epoch 2/5 (40%), ETA 1m30s, loss 0.5123, acc 0.8100",
                                             "r: epoch 3/5 (60%), ETA 1m30s, loss 0.5123, acc 0.8100"]
    term = io.StringIO()
    view = RunView(term, "r", bar=True)
    view.update({"status": {"phase": "Running", "progress": progress}})
    view.log("a log line")
    view.close()
    drawn = term.getvalue()
    assert "40%|" in drawn and "epoch 2/5" in drawn and "ETA 1m30s" in drawn and "a log line" in drawn


class _LogHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        _LogHandler.paths.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        for line in (b"epoch 1/2: loss 1.0\n", b"epoch 2/2: loss 0.5\r\n", b"no newline at the end"):
            self.wfile.write(line)
            self.wfile.flush()

    def log_message(self, *args):
        pass


def test_pod_log_streams_lines_over_http(tmp_path, monkeypatch):
    from tests.operator.loopback_api import LoopbackApi

    _LogHandler.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LogHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        loop = LoopbackApi()
        loop.server.server_close()
        loop.server = server  # its kubeconfig, pointing at this server
        monkeypatch.setenv("KUBECONFIG", str(loop.kubeconfig(tmp_path)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        lines = list(KubeApi(load_client_config()).pod_log("ml", "j-launcher-x", "launcher", follow=True))
    finally:
        server.shutdown()
        server.server_close()
    assert lines == ["epoch 1/2: loss 1.0", "epoch 2/2: loss 0.5", "no newline at the end"]
    assert _LogHandler.paths == ["/api/v1/namespaces/ml/pods/j-launcher-x/log?container=launcher&follow=true"]


def test_a_terminal_gets_the_bar_a_pipe_plain_lines():
    import os
    import pty

    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        view = RunView(tty, "r")
        assert view.is_bar
        view.update({"status": {"phase": "Running", "progress": {"epoch": 1, "maxEpoch": 4, "percent": 25,
                                                                   "eta": "3m"}}})
        view.close()
    drawn = read_until_closed(master).decode()  # the terminal's side is closed
    os.close(master)
    assert "25%|" in drawn and "ETA 3m" in drawn, drawn
    read, write = os.pipe()
    with os.fdopen(write, "w") as pipe:
        assert not RunView(pipe, "r").is_bar
    os.close(read)
