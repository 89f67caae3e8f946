"""Experiment tracking (report/tracking.py) against a real `mlflow server` (sqlite backend, local artifact store)
started on 127.0.0.1 by these tests: a tiny training run logs one run named after its results folder, with one
value per epoch equal to training.csv's, the spec's parameters, the evaluation and the artifacts; a resumed run
continues the same MLflow run. The same run logs to W&B and ClearML offline (the spec's visualizer.wandb_config and
clearml_config), read back from their offline files. mlflow, wandb and clearml are the `tracking` extra
(scripts/setup.sh installs it): its absence is a skip, which strict mode (CI) turns into a failure."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from kestrel_trainer.report import tracking
from tests.train.conftest import write_spec

mlflow = pytest.importorskip("mlflow", reason="mlflow (the `tracking` extra, scripts/setup.sh) is not installed")
from mlflow.tracking import MlflowClient  # noqa: E402

EXPERIMENT = "kestrel-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a sqlite backend and proxied artifacts in a temp folder; its URL."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.exists() else "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    log_file = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # the first start migrates the sqlite schema; slow on a loaded machine
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up in 240 s: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (its workers), started above
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log_file.close()


WANDB_VISUALIZER = """  visualizer {
    enabled: true
    num_images: 1
    wandb_config { enabled: true project: "kestrel-tests" tags: "tiny" }
    clearml_config { project: "kestrel-tests" tags: "tiny" }
  }
"""


def _with_wandb(spec: Path) -> Path:
    """The tiny spec with the original's visualizer.wandb_config and clearml_config (both offline in these
    tests)."""
    text = spec.read_text().replace("train_config {\n", "train_config {\n" + WANDB_VISUALIZER, 1)
    spec.write_text(text)
    return spec


def _with_clearml(spec: Path) -> Path:
    """The tiny spec with only the original's visualizer.clearml_config (offline in these tests)."""
    vis = '  visualizer {\n    enabled: true\n    num_images: 0\n    clearml_config { project: "kestrel-tests" }\n  }\n'
    spec.write_text(spec.read_text().replace("train_config {\n", "train_config {\n" + vis, 1))
    return spec


def _clearml_session(cache: Path, task_id: str) -> tuple[dict, list[dict]]:
    """A ClearML offline session (CLEARML_CACHE_DIR/offline/TASK_ID, as clearml 2.1.12 writes it and
    Task.import_offline_session reads it): task.json and the events of metrics.jsonl (a JSON list a line)."""
    folder = cache / "offline" / task_id
    task = json.loads((folder / "task.json").read_text())
    events = [e for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()
              for e in json.loads(line)]
    return task, events


def _clearml_scalars(events: list[dict], title: str, series: str) -> list[tuple[int, float]]:
    return [(e["iter"], e["value"]) for e in events
            if e["type"] == "training_stats_scalar" and (e["metric"], e["variant"]) == (title, series)]


def _wandb_history(results: Path) -> tuple[list[str], list[dict]]:
    """The offline W&B runs under RESULTS/wandb (their ids) and the history rows of their transaction logs, read
    with wandb's own datastore reader."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    runs = sorted(results.glob("wandb/offline-run-*/run-*.wandb"))
    rows = []
    for path in runs:
        store = datastore.DataStore()
        store.open_for_scan(str(path))
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            if record.WhichOneof("record_type") == "history":
                rows.append({(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
    return [p.stem.removeprefix("run-") for p in runs], rows


def _train(spec: Path, results: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI=url, MLFLOW_EXPERIMENT_NAME=EXPERIMENT, WANDB_MODE="offline",
               WANDB_SILENT="true", CLEARML_OFFLINE_MODE="1", CLEARML_CACHE_DIR=str(results.parent / "clearml"))
    env.pop("KESTREL_KEY", None)
    return subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r",
                           str(results), *extra], capture_output=True, text=True, env=env)


def _csv_rows(results: Path) -> list[dict[str, str]]:
    with (results / "training.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.slow
def test_training_logs_one_mlflow_run_and_a_resume_continues_it(tmp_path, fashion_subset, mlflow_server):
    results = tmp_path / "tiny-run"
    spec = _with_wandb(write_spec(tmp_path, fashion_subset, epochs=2))
    first = _train(spec, results, mlflow_server, "--evaluate")
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{results.name}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    saved = tracking._read_saved(str(results / tracking.TRACKING_FILE), mlflow_server)
    assert saved["run_id"] == run.info.run_id
    assert run.info.run_id in first.stderr  # the log names the run (and its URL)

    rows = _csv_rows(results)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("loss", "acc", "val_loss", "val_acc", "lr"):
        assert _history(client, run.info.run_id, key) == [(int(r["epoch"]), float(r[key])) for r in rows], key
    params = run.data.params
    assert params["train_config.n_epochs"] == "2" and params["model_config.arch"] == "resnet"
    assert params["train_config.batch_size_per_gpu"] == "16"
    evaluation = json.loads((results / "evaluate" / "results.json").read_text())
    assert run.data.metrics["eval_top_1_accuracy"] == evaluation["top_1_accuracy"]
    assert run.data.metrics["eval_top_3_accuracy"] == evaluation["top_3_accuracy"]
    artifacts = _artifacts(client, run.info.run_id)
    assert {"training_curves.png", "spec.txt", "summary.json", "training.csv", "evaluate/results.json",
            "evaluate/confusion_matrix.png"} <= artifacts
    assert any(a.startswith("model/resnet_002") for a in artifacts), artifacts
    # the model artifact is the final checkpoint, byte for byte
    model_artifact = next(a for a in artifacts if a.startswith("model/"))
    local = client.download_artifacts(run.info.run_id, model_artifact, str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (results / "weights" / Path(model_artifact).name).read_bytes()

    # W&B (the spec's visualizer.wandb_config), offline: the same per-epoch values in its run's history
    wandb_runs, history = _wandb_history(results)
    assert len(wandb_runs) == 1
    assert [h["eval_top_1_accuracy"] for h in history if "eval_top_1_accuracy" in h] == [evaluation["top_1_accuracy"]]
    for key in ("loss", "acc", "val_loss", "val_acc", "lr"):
        assert [(h["_step"], h[key]) for h in history if key in h] == [(int(r["epoch"]), float(r[key])) for r in rows]

    # ClearML (the spec's visualizer.clearml_config), offline: a task named after the folder, the CSV's values per
    # epoch (iteration = epoch), the spec's fields as its configuration, the sample images, the files
    clearml_id = json.loads((results / tracking.TRACKING_FILE).read_text())["clearml"]["task_id"]
    task, events = _clearml_session(tmp_path / "clearml", clearml_id)
    assert (task["name"], task["project_name"], task["tags"]) == (results.name, "kestrel-tests", ["tiny"])
    for key, (title, series) in tracking.CLEARML_SERIES.items():
        assert _clearml_scalars(events, title, series) == [(int(r["epoch"]), float(r[key])) for r in rows], key
    assert [e["value"] for e in events if e["type"] == "training_stats_scalar" and e["metric"] == "Summary"
            and e["variant"] == "eval_top_1_accuracy"] == [evaluation["top_1_accuracy"]]
    assert task["hyperparams"]["spec"]["train_config.n_epochs"]["value"] == "2"
    assert sorted(e["iter"] for e in events if e["type"] == "training_debug_image") == [1, 2]
    files = {a["key"]: Path(a["uri"]) for a in task["execution"]["artifacts"]}
    assert {"training_curves.png", "spec.txt", "summary.json", "training.csv", "evaluate/results.json",
            "evaluate/confusion_matrix.png"} <= set(files), files
    model_key = next(k for k in files if k.startswith("model/resnet_002"))
    assert files[model_key].read_bytes() == (results / "weights" / model_key.split("/", 1)[1]).read_bytes()
    assert files["spec.txt"].read_bytes() == spec.read_bytes()

    # resume: one more epoch in the same folder continues the same MLflow run (and the same W&B run and ClearML
    # task ids)
    spec3 = _with_wandb(write_spec(tmp_path, fashion_subset, epochs=3))
    second = _train(spec3, results, mlflow_server)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"continuing run {run.info.run_id}" in second.stderr
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{results.name}'")
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    rows = _csv_rows(results)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for key in ("loss", "acc", "val_loss", "val_acc", "lr"):
        assert _history(client, run.info.run_id, key) == [(int(r["epoch"]), float(r[key])) for r in rows], key
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    resumed_runs, history = _wandb_history(results)
    assert set(resumed_runs) == set(wandb_runs)  # offline, a resume writes another log of the same run id
    last = {h["_step"]: h["loss"] for h in history if "loss" in h}
    assert last == {int(r["epoch"]): float(r["loss"]) for r in rows}
    assert f"ClearML: continuing task {clearml_id}" in second.stderr
    assert json.loads((results / tracking.TRACKING_FILE).read_text())["clearml"]["task_id"] == clearml_id
    _, events = _clearml_session(tmp_path / "clearml", clearml_id)  # offline, the same session folder goes on
    for key, (title, series) in tracking.CLEARML_SERIES.items():
        assert _clearml_scalars(events, title, series) == [(int(r["epoch"]), float(r[key])) for r in rows], key


def test_no_tracking_uri_no_tracker(tmp_path):
    assert tracking.open_tracker(str(tmp_path), "x", environ={}) is None
    assert not (tmp_path / tracking.TRACKING_FILE).exists()


def test_unreachable_server_is_one_warning_and_training_goes_on(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="kestrel.tracking"):
        assert tracking.open_tracker(str(tmp_path), "x", environ={"MLFLOW_TRACKING_URI": url}) is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and url in warnings[0] and "untracked" in warnings[0]


def test_missing_mlflow_names_the_extra(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # `import mlflow.tracking` raises ImportError
    with caplog.at_level(logging.WARNING, logger="kestrel.tracking"):
        assert tracking.open_tracker(str(tmp_path), "x", environ={"MLFLOW_TRACKING_URI": "http://x"}) is None
    assert [r.getMessage() for r in caplog.records] == [
        "MLFLOW_TRACKING_URI is set but the mlflow package is not installed: install kestrel-classify[tracking] "
        "(pip install 'kestrel-classify[tracking]') to log this run to MLflow; training goes on untracked"]


def test_wandb_settings_from_the_spec():
    w = tracking.WANDB
    fields = {"train_config.visualizer.enabled": True, f"{w}.enabled": True, f"{w}.project": "p",
              f"{w}.tags": ("a", "b"), f"{w}.mode": "OFFLINE"}
    assert tracking.wandb_settings(fields, "run1", "/r", environ={}) == {
        "project": "p", "entity": None, "name": "run1", "tags": ["a", "b"], "notes": None, "dir": "/r",
        "mode": "offline"}
    assert "mode" not in tracking.wandb_settings(fields, "run1", "/r", environ={"WANDB_MODE": "disabled"})
    assert tracking.wandb_settings({**fields, "train_config.visualizer.enabled": False}, "r", "/r", environ={}) is None
    assert tracking.wandb_settings({**fields, f"{tracking.WANDB}.enabled": False}, "r", "/r", environ={}) is None


def test_missing_wandb_names_what_to_install(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    fields = {"train_config.visualizer.enabled": True, f"{tracking.WANDB}.enabled": True}
    with caplog.at_level(logging.WARNING, logger="kestrel.tracking"):
        assert tracking.open_wandb(fields, str(tmp_path), "x") is None
    assert [r.getMessage() for r in caplog.records] == [
        "train_config.visualizer.wandb_config.enabled is set but the wandb package is not installed: pip install "
        "'wandb==0.28.0' to log this run to W&B; training goes on without it"]


def test_clearml_settings_from_the_spec():
    c = tracking.CLEARML
    fields = {f"{c}.project": "p", f"{c}.task": None, f"{c}.tags": ("a", "b")}
    assert tracking.clearml_settings(fields, True, "run1") == {"project_name": "p", "task_name": "run1",
                                                               "tags": ["a", "b"]}
    assert tracking.clearml_settings({f"{c}.task": "t", f"{c}.tags": ()}, True, "run1") == {
        "project_name": "kestrel", "task_name": "t", "tags": None}
    assert tracking.clearml_settings(fields, False, "run1") is None


def test_missing_clearml_names_what_to_install(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "clearml", None)
    with caplog.at_level(logging.WARNING, logger="kestrel.tracking"):
        assert tracking.open_clearml({}, True, str(tmp_path), "x") is None
    assert [r.getMessage() for r in caplog.records] == [
        "train_config.visualizer.clearml_config is set but the clearml package is not installed: pip install "
        "'clearml==2.1.12' to log this run to ClearML; training goes on without it"]
    assert not (tmp_path / tracking.TRACKING_FILE).exists()


def test_spec_params_and_run_url():
    assert tracking.spec_params({"a.b": 1, "a.c": None, "a.d": (1, 2), "a.e": {"r": 1.0}, "a.f": "x" * 7000}) == {
        "a.b": "1", "a.d": "1,2", "a.e": '{"r": 1.0}', "a.f": "x" * 6000}
    assert tracking.run_url("http://h:5000/", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc"
    assert tracking.run_url("file:///tmp/mlruns", "3", "abc") == "abc"


@pytest.mark.slow
def test_a_stop_with_clearml_exits_143_and_the_resume_continues_its_task(tmp_path, fashion_subset):
    """ClearML's Task.init installs its own SIGTERM handler: a SIGTERM in epoch 2 still stops the run with a
    checkpoint and exit 143 (preemption), and the rerun continues the same ClearML task at the right epochs."""
    pytest.importorskip("clearml", reason="clearml (the `tracking` extra, scripts/setup.sh) is not installed")
    spec = _with_clearml(write_spec(tmp_path, fashion_subset, epochs=40))
    spec.write_text(spec.read_text().replace("batch_size_per_gpu: 16", "batch_size_per_gpu: 2"))
    results = tmp_path / "r"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "KESTREL_KEY"))}
    env.update(CLEARML_OFFLINE_MODE="1", CLEARML_CACHE_DIR=str(tmp_path / "clearml"))
    cmd = [sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r", str(results)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not any("epoch 2/40 step" in x for x in lines):
        time.sleep(0.05)
    assert any("epoch 2/40 step" in x for x in lines), "epoch 2 never started:\n" + "".join(lines[-20:])
    proc.terminate()
    assert proc.wait(timeout=120) == 143, "".join(lines[-20:])
    reader.join(timeout=30)
    err = "".join(lines)
    assert "checkpoint written to" in err and "Traceback" not in err
    task_id = json.loads((results / tracking.TRACKING_FILE).read_text())["clearml"]["task_id"]
    epochs_done = len(_csv_rows(results))
    spec.write_text(spec.read_text().replace("n_epochs: 40", f"n_epochs: {epochs_done + 1}"))
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"ClearML: continuing task {task_id}" in again.stderr
    rows = _csv_rows(results)
    assert len(rows) == epochs_done + 1
    _, events = _clearml_session(tmp_path / "clearml", task_id)
    assert _clearml_scalars(events, "loss", "train") == [(int(r["epoch"]), float(r["loss"])) for r in rows]
