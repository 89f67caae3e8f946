"""scripts/build_images.sh --push: what it refuses, before it builds or installs anything, with one line each (the
push itself runs against a real registry in e2e/test_registry.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build_images.sh"


def push(tmp_path: Path, *args: str, script: Path = SCRIPT, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KESTREL_REGISTRY_")}
    helm = tmp_path / "helm"
    helm.write_text("#!/bin/sh\nexit 0\n")
    helm.chmod(0o755)
    base.update({"KESTREL_HELM": str(helm), "KESTREL_IMAGE_CACHE": str(tmp_path / "cache")}, **env)
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=base, timeout=60)


@pytest.mark.parametrize(("args", "env", "said"), [
    (["--push", "Bad Host!/x"], {}, "--push: 'Bad Host!/x' is not HOST[:PORT][/PATH]"),
    (["--push", "reg.example:5000/Kestrel"], {}, "is not HOST[:PORT][/PATH] (lower-case path)"),
    (["--push", "reg.example:5000/kestrel"], {"KESTREL_REGISTRY_USER": "u"},
     "set both KESTREL_REGISTRY_USER and KESTREL_REGISTRY_PASSWORD, or neither"),
    (["--push", "reg.example:5000/kestrel"], {"KESTREL_REGISTRY_CA": "/nonexistent/ca.crt"},
     "KESTREL_REGISTRY_CA=/nonexistent/ca.crt is not a file"),
    (["--push", "reg.example:5000/kestrel"], {"KESTREL_HELM": "/nonexistent/helm"}, "--push: no helm binary"),
])
def test_push_refuses_bad_input_with_one_line_before_building(tmp_path, args, env, said):
    out = push(tmp_path, *args, **env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and said in lines[0], out.stderr
    assert not (tmp_path / "cache").exists()  # nothing built, nothing installed


def test_push_refuses_a_chart_whose_version_is_not_the_packages(tmp_path):
    """The chart's version/appVersion and the image tags are one number: a copy of the repo whose Chart.yaml drifted
    is refused, naming the field and both values."""
    if shutil.which("git") is None:
        pytest.skip("git is needed for the tag's commit")
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    (copy / "charts" / "kestrel").mkdir(parents=True)
    shutil.copy(SCRIPT, copy / "scripts" / "build_images.sh")
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    chart = (REPO / "charts" / "kestrel" / "Chart.yaml").read_text()
    (copy / "charts" / "kestrel" / "Chart.yaml").write_text(chart.replace('appVersion: "', 'appVersion: "9'))
    subprocess.run(["git", "init", "-q", str(copy)], check=True)
    subprocess.run(["git", "-C", str(copy), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q",
                    "--allow-empty", "-m", "t"], check=True)
    out = push(tmp_path, "--push", "reg.example:5000/kestrel", script=copy / "scripts" / "build_images.sh")
    assert out.returncode == 2, out.stderr
    assert "charts/kestrel/Chart.yaml appVersion is '90." in out.stderr and "pyproject.toml's version is '0." in \
        out.stderr, out.stderr
