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


def test_every_trainable_conformance_spec_dry_runs(tmp_path, conformance_specs):
    ran = 0
    for path in conformance_specs:
        try:
            spec = load_spec(path, "train")
        except Exception:
            continue  # not a training spec (deploy_minimal has no datasets): `spec check` covers it
        proc = _dry_run(path, tmp_path / path.stem)
        assert proc.returncode == 0, proc.stderr
        assert f"model: {spec.model.name}, input 3x224x224" in proc.stdout
        assert "assuming 1000 classes" in proc.stdout  # the users' dataset folders do not exist here
        assert "a new run" in proc.stdout
        assert not (tmp_path / path.stem).exists(), "a dry run must not write anything"
        ran += 1
    assert ran >= 4


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
