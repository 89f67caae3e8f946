"""`kestrel train --dry-run` says what a run would build and do for every real user's spec, writing nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kestrel_trainer.spec import load_spec
from tests.train.conftest import write_spec


def _dry_run(spec, results) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(spec), "-r",
                           str(results), "--dry-run"], capture_output=True, text=True, timeout=300)


# Conformance specs that are not training specs, by name, with the one-line error `train --dry-run` gives and
# why. Every other spec of the corpus must dry-run; a new spec that cannot fails the test below until it is
# fixed or listed here with its reason.
NOT_TRAINABLE = {
    "deploy_minimal": (
        "train_config.train_dataset_path: is required for training",
        "an evaluate/export spec: its train_config holds only preprocess_mode, so there is no data to train on"),
}


def test_every_trainable_conformance_spec_dry_runs(tmp_path, conformance_specs):
    names = {path.stem for path in conformance_specs}
    assert set(NOT_TRAINABLE) <= names, f"listed but no longer in the corpus: {set(NOT_TRAINABLE) - names}"
    failed = []
    for path in conformance_specs:
        proc = _dry_run(path, tmp_path / path.stem)
        assert not (tmp_path / path.stem).exists(), f"{path.name}: a dry run must not write anything"
        assert "Traceback" not in proc.stderr, f"{path.name}:\n{proc.stderr[-3000:]}"
        if path.stem in NOT_TRAINABLE:
            error, _why = NOT_TRAINABLE[path.stem]
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, f"{path.name}: {proc.returncode}\n{proc.stderr}"
            assert lines[0].startswith(f"kestrel: error: {path}:") and lines[0].endswith(error), lines[0]
            continue
        if proc.returncode != 0:
            failed.append(f"{path.name}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
            continue
        spec = load_spec(path, "train")
        assert f"model: {spec.model.name}, input 3x224x224" in proc.stdout, path.name
        assert "assuming 1000 classes" in proc.stdout, path.name  # the users' dataset folders do not exist here
        assert "a new run" in proc.stdout, path.name
    assert not failed, "conformance specs that do not dry-run:\n" + "\n".join(failed)
    assert len(names) - len(NOT_TRAINABLE) >= 5


@pytest.mark.slow
def test_dry_run_reports_data_schedule_and_resume(tmp_path, fashion_subset):
    spec = write_spec(tmp_path, fashion_subset, epochs=3)
    proc = _dry_run(spec, tmp_path / "r")
    assert proc.returncode == 0, proc.stderr
    assert "data: 80 training and 80 validation images of 10 classes" in proc.stdout
    assert "schedule: 3 epochs x 5 steps of 16 per rank on 1 rank(s); cosine" in proc.stdout
    weights = tmp_path / "r" / "weights"
    weights.mkdir(parents=True)
    (weights / "resnet_002.tlt").write_bytes(b"x")
    again = _dry_run(spec, tmp_path / "r")
    assert f"would resume from {weights / 'resnet_002.tlt'} (2 epochs done)" in again.stdout


def test_a_bad_image_cache_mode_from_the_environment_is_a_one_line_error(tmp_path, conformance_specs):
    import os

    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", "train", "-e", str(conformance_specs[0]),
                           "-r", str(tmp_path / "r"), "--dry-run"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, KESTREL_IMAGE_CACHE="always"))
    assert proc.returncode == 2
    assert "KESTREL_IMAGE_CACHE must be one of auto, on, off, got 'always'" in proc.stderr
    assert "Traceback" not in proc.stderr
