"""The submit client from a user's side: `kubectl kestrel` (the real kubectl, finding the plugin on PATH as it finds
any kubectl-* executable) submits a spec file to the real node, follows it with progress, ETA and rank 0's log, and
exits 0; a run whose dataset folder does not exist exits 1 with the trainer's line; a bad request exits 2 before
anything runs; Ctrl-C stops following, not the run, and `wait --follow` picks it up again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from e2e import cluster as cl
from e2e import kestrel_objects as ko
from e2e import node as node_mod
from e2e import real_runs
from e2e.conftest import wait_until
from tests.train.conftest import TINY_SPEC

EPOCHS = 3
TRAIN = "ClassificationTrain"


@pytest.fixture(scope="module", autouse=True)
def _real_mpi_operator(mpi_controller: str) -> None:
    if mpi_controller != "real":
        pytest.fail("the real-node runs need the real MPI Operator")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `kubectl-kestrel`, the script pip writes for the console script of pyproject.toml."""
    folder = tmp_path_factory.mktemp("plugin")
    script = folder / "kubectl-kestrel"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom kestrel_operator.client.cli import main\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)
    return folder


def _env(cluster: cl.ControlPlane, plugin_dir: Path) -> dict[str, str]:
    path = os.pathsep.join([str(plugin_dir), str(cluster.bin), os.environ.get("PATH", "")])
    # plain progress lines on every report (stdout is a pipe here, not a terminal)
    return cluster.env(PATH=path, KESTREL_PROGRESS_SECONDS="0", PYTHONUNBUFFERED="1")


def kestrel(cluster: cl.ControlPlane, plugin_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(cluster.bin / "kubectl"), "kestrel", *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(cluster, plugin_dir))


def _spec_file(folder: Path, name: str) -> Path:
    path = folder / f"{name}.txt"
    path.write_text(TINY_SPEC.format(data=real_runs.DATA_MOUNT, epochs=EPOCHS, mixup=0.0))
    return path


def _node_overrides() -> str:
    """What the real node needs and a user's cluster would not: its selector and taint, the image already there,
    small requests (2 cores shared by everything here)."""
    return json.dumps({"spec": {"imagePullPolicy": "Never", "nodeSelector": dict(node_mod.NODE_SELECTOR),
                                "tolerations": list(node_mod.NODE_TOLERATIONS),
                                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}})


def _submit_args(ws: real_runs.Workspace, spec: Path, name: str, data_claim: str = real_runs.DATA_CLAIM) -> list[str]:
    return ["submit", "train", "-e", str(spec), "--name", name, "-n", ws.namespace, "--image", ws.image, "--gpus", "0",
            "--num-processes", "1", "--data-pvc", data_claim, "--results-pvc", f"{real_runs.RESULTS_CLAIM}/{name}",
            "--overrides", _node_overrides()]


def test_submit_follows_progress_and_log_and_exits_0(cluster: cl.ControlPlane, plugin_dir: Path, tmp_path: Path,
                                                     real_workspace: real_runs.Workspace) -> None:
    ws = real_workspace
    ws.make_results_folder("client-ok")
    spec = _spec_file(tmp_path, "client-ok")
    start = time.monotonic()
    run = kestrel(cluster, plugin_dir, *_submit_args(ws, spec, "client-ok"), timeout=900)
    elapsed = time.monotonic() - start
    out = run.stdout
    assert run.returncode == 0, f"exit {run.returncode}\n--- stdout\n{out[-4000:]}\n--- stderr\n{run.stderr[-3000:]}"
    lines = out.splitlines()
    assert lines[0] == f"classificationtrain.kestrel.dev/client-ok created in namespace {ws.namespace}", lines[:3]
    # Progress from status.progress: every epoch's line with percent and the trainer's ETA.
    progress = [ln for ln in lines if ln.startswith("client-ok: epoch ")]
    assert any(f"epoch {EPOCHS}/{EPOCHS} (100%), ETA " in ln for ln in progress), progress
    assert all(", ETA " in ln for ln in progress) and len(progress) >= 2, progress
    # Rank 0's own log lines, streamed from the launcher (the trainer's per-epoch line).
    for epoch in range(1, EPOCHS + 1):
        assert any(ln.startswith(f"epoch {epoch}/{EPOCHS}: loss ") or f"] epoch {epoch}/{EPOCHS}: loss " in ln
                   or f" epoch {epoch}/{EPOCHS}: loss " in ln for ln in lines), out[-4000:]
    assert lines[-1].startswith(f"client-ok: Succeeded: epoch {EPOCHS}/{EPOCHS} (100%)"), lines[-3:]
    # The metrics it shows are the run's own, as training.csv has them (an independent file on the volume).
    final = ko.get_resource(cluster, TRAIN, "client-ok", ws.namespace)
    rows = (ws.run_folder(final) / "training.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    val_acc = float(last[header.index("val_acc")])
    assert f"val_acc {val_acc:.4f}" in lines[-1], (lines[-1], rows[-1])

    listed = kestrel(cluster, plugin_dir, "list", "-n", ws.namespace)
    row = next(ln for ln in listed.stdout.splitlines() if ln.startswith("train/client-ok "))
    assert "Succeeded" in row and f"{EPOCHS}/{EPOCHS} 100%" in row, listed.stdout
    status = kestrel(cluster, plugin_dir, "status", "train/client-ok", "-n", ws.namespace)
    assert status.returncode == 0 and "Phase:       Succeeded" in status.stdout, status.stdout + status.stderr
    logs = kestrel(cluster, plugin_dir, "logs", "client-ok", "-n", ws.namespace)
    assert f"epoch {EPOCHS}/{EPOCHS}: loss" in logs.stdout, logs.stdout[-2000:] + logs.stderr
    # A bad request is refused before anything runs: the name is taken; a spec file with a typo (its line named).
    again = kestrel(cluster, plugin_dir, *_submit_args(ws, spec, "client-ok"))
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.splitlines()) == 1, again
    bad = tmp_path / "bad.txt"
    bad.write_text(spec.read_text().replace("n_epochs:", "n_epoch:"))
    refused = kestrel(cluster, plugin_dir, *_submit_args(ws, bad, "client-bad"))
    assert refused.returncode == 2 and f"{bad}:" in refused.stderr and "n_epoch" in refused.stderr, refused
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    print(f"\n[e2e] kubectl kestrel submit: {EPOCHS} epochs on the real node, exit 0 after {elapsed:.0f} s; "
          f"{len(progress)} progress lines, last: {progress[-1]}")


def _as_on_a_terminal() -> None:
    """Ctrl-C's SIGINT as a terminal delivers it: a suite started in the background (`run.sh &`, CI) passes SIGINT on
    ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _submitter_kubeconfig(cluster: cl.ControlPlane, namespace: str, folder: Path) -> Path:
    """A kubeconfig whose user holds only examples/k8s/submitter-role.yaml in `namespace` (a ServiceAccount's token)."""
    role = yaml.safe_load((cl.REPO_ROOT / "examples" / "k8s" / "submitter-role.yaml").read_text())
    cluster.apply(role, namespace=namespace)
    cluster.kubectl("create", "serviceaccount", "submitter", "-n", namespace)
    cluster.kubectl("create", "rolebinding", "submitter", f"--role={role['metadata']['name']}",
                    f"--serviceaccount={namespace}:submitter", "-n", namespace)
    token = cluster.kubectl("create", "token", "submitter", "-n", namespace, "--duration=30m").stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    path = folder / "submitter-kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def test_failed_run_exits_1_with_the_trainer_line_and_ctrl_c_leaves_it_running(
        cluster: cl.ControlPlane, plugin_dir: Path, tmp_path: Path, real_workspace: real_runs.Workspace) -> None:
    ws = real_workspace
    empty = ws.results_dir.parent / "client-empty-data"
    empty.mkdir(exist_ok=True)
    ko.provide_claims(cluster, ws.namespace, ["client-empty-data"], {"client-empty-data": empty})
    ws.make_results_folder("client-fail")
    spec = _spec_file(tmp_path, "client-fail")
    cmd = [str(cluster.bin / "kubectl"), "kestrel", *_submit_args(ws, spec, "client-fail", "client-empty-data")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(cluster, plugin_dir), preexec_fn=_as_on_a_terminal)
    try:
        first = proc.stdout.readline()
        assert "client-fail created" in first, first + proc.stderr.read()
        time.sleep(3)  # following now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert f"kubectl kestrel wait train/client-fail -n {ws.namespace} --follow" in err, err
    # The run goes on: the resource is there and reaches its end without the client.
    assert ko.get_resource(cluster, TRAIN, "client-fail", ws.namespace)["metadata"]["name"] == "client-fail"

    # Picked up again by a user who holds only the submitter Role (least privilege: no watch, no cluster scope).
    submitter = _submitter_kubeconfig(cluster, ws.namespace, tmp_path)
    run = kestrel(cluster, plugin_dir, "wait", "train/client-fail", "-n", ws.namespace, "--follow",
                  "--kubeconfig", str(submitter), timeout=600)
    line = f"kestrel: error: dataset folder not found: {real_runs.DATA_MOUNT}/train"
    assert run.returncode == 1, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("client-fail: Failed (") and line in last, run.stderr
    assert line in run.stdout, run.stdout[-3000:]  # the launcher's log, streamed, has it too
    deleted = kestrel(cluster, plugin_dir, "delete", "client-fail", "-n", ws.namespace, "--kubeconfig", str(submitter))
    assert deleted.returncode == 0, deleted.stderr
    wait_until("client-fail deleted", lambda: not cluster.exists("classificationtrain", "client-fail", ws.namespace))
