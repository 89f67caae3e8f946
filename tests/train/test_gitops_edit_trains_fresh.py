"""The stale-model defect, end to end without a cluster: a finished ClassificationTrain is edited (more epochs),
and the trainer runs exactly the commands the operator puts in the two generations' MPIJobs, on one results
volume (a folder here). Before run folders, both generations trained in the volume's root: the edited run
resumed the old run's newest checkpoint ("resuming from ...resnet_001") and trained one epoch on top of it.
Now the edit trains from scratch in its own folder and the first run's files stay byte for byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from kestrel_operator.handlers.reconcile import Reconciler
from kestrel_operator.settings import Settings
from tests.operator.fake_api import FakeApi
from tests.train.conftest import TINY_SPEC

RESULTS_MOUNT = "/results"


def _body(spec_text: str) -> dict:
    return {"apiVersion": "kestrel.dev/v1alpha1", "kind": "ClassificationTrain",
            "metadata": {"name": "fashion", "namespace": "ml"},
            "spec": {"experimentSpec": spec_text, "keySecretRef": {"name": "key"}, "gpus": 0,
                     "volumes": {"data": {"claimName": "data"},
                                 "results": {"claimName": "results", "mountPath": RESULTS_MOUNT}}}}


def _trainer_command(api: FakeApi, job: str) -> list[str]:
    c = api.body("MPIJob", job, "ml")["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    return [c["command"][0], *c.get("args", [])]


def _run(command: list[str], spec: Path, volume: Path) -> subprocess.CompletedProcess:
    """The pod's command on this machine: the spec ConfigMap's file and the results volume mapped to folders."""
    assert command[:3] == ["kestrel", "train", "-e"]
    args = [str(spec) if a == command[3] else a.replace(RESULTS_MOUNT, str(volume), 1) if a.startswith(RESULTS_MOUNT)
            else a for a in command[2:]]
    env = {**os.environ, "KESTREL_KEY": "gitops-key"}
    return subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", *args], env=env,
                          capture_output=True, text=True, timeout=900)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_edited_spec_trains_from_scratch_and_leaves_the_first_runs_files(fashion_subset: Path,
                                                                            tmp_path: Path) -> None:
    api, rec = FakeApi(), Reconciler(FakeApi(), Settings(default_image="kestrel-trainer:test"))
    rec.api = api
    volume = tmp_path / "volume"
    volume.mkdir()
    first, edited = (TINY_SPEC.format(data=fashion_subset, epochs=n, mixup=0.0) for n in (1, 2))

    api.put(_body(first))
    rec.reconcile(api.body("ClassificationTrain", "fashion", "ml"))
    spec1 = tmp_path / "spec1.txt"
    spec1.write_text(first)
    done = _run(_trainer_command(api, "fashion-train-g1"), spec1, volume)
    assert done.returncode == 0, done.stderr[-3000:]
    api.set_mpijob_conditions("fashion-train-g1", [{"type": "Succeeded", "status": "True"}], "ml")
    rec.reconcile(api.body("ClassificationTrain", "fashion", "ml"))
    before = _digests(volume)
    first_folder = api.body("ClassificationTrain", "fashion", "ml")["status"]["runPath"]

    api.put(_body(edited))  # the Git edit: generation 2, two epochs
    rec.reconcile(api.body("ClassificationTrain", "fashion", "ml"))  # stops generation 1's MPIJob
    rec.reconcile(api.body("ClassificationTrain", "fashion", "ml"))  # starts generation 2
    command = _trainer_command(api, "fashion-train-g2")
    spec2 = tmp_path / "spec2.txt"
    spec2.write_text(edited)
    done = _run(command, spec2, volume)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr

    assert "resuming from" not in log and "nothing to train" not in log, log[-3000:]
    assert "epoch 1/2" in log and "epoch 2/2" in log, log[-3000:]
    second_folder = command[command.index("-r") + 1]
    assert second_folder != first_folder
    second = volume / Path(second_folder).relative_to(RESULTS_MOUNT)
    assert sorted(p.name for p in (second / "weights").iterdir()) == ["resnet_001.tlt", "resnet_002.tlt"]
    rows = (second / "training.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    # The first run's folder: every file as it was.
    after = _digests(volume)
    assert {k: v for k, v in after.items() if k in before} == before
