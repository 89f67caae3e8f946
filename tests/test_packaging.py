"""The distribution users install (docs/install.md, "The trainer on a workstation"): the sdist and the wheel built
from it by `python -m build`, the wheel installed into a fresh virtualenv, its console scripts run from there.

scripts/test.sh builds both into dist/ and points KESTREL_DIST at it; run alone, the test builds them into a temp
folder (about 30 s: `build` makes an isolated environment with the build backend pyproject.toml names).
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
NAME = PYPROJECT["project"]["name"]
VERSION = PYPROJECT["project"]["version"]
STEM = f"{NAME.replace('-', '_')}-{VERSION}"  # the file name form of the distribution (PEP 427/625)
PROTOS = sorted(p.name for p in (REPO / "trainer_image" / "kestrel_trainer" / "spec" / "proto").glob("*.proto"))


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    given = os.environ.get("KESTREL_DIST")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], capture_output=True,
                          text=True, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, found {[p.name for p in found]}"
    return found[0]


def test_the_distribution_name_is_not_the_unrelated_kestrel_on_pypi():
    assert NAME == "kestrel-classify"
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == {"kestrel", "classification_tf1", "kestrel-operator", "kestrel-worker", "kubectl-kestrel"}


def test_the_install_hint_for_tracking_names_this_distribution_and_its_extra():
    """The trainer's warning without mlflow tells users what to pip install: it must be this project's name (the
    `kestrel` on PyPI is another project) and an extra that pyproject.toml has, holding mlflow."""
    from kestrel_trainer.report import tracking

    name, extra = tracking.EXTRA.removesuffix("]").split("[")
    assert name == NAME
    assert any(dep.startswith("mlflow") for dep in PYPROJECT["project"]["optional-dependencies"][extra])


def test_wheel_holds_packages_metadata_console_scripts_and_proto_files(dist):
    wheel = _one(dist, f"{STEM}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = email.parser.Parser().parsestr(zf.read(f"{STEM}.dist-info/METADATA").decode())
        entry_points = zf.read(f"{STEM}.dist-info/entry_points.txt").decode()
    assert meta["Name"] == NAME and meta["Version"] == VERSION
    assert set(meta.get_all("Provides-Extra")) >= {"trainer", "operator"}
    for script, target in PYPROJECT["project"]["scripts"].items():
        assert f"{script} = {target}" in entry_points
    for proto in PROTOS:
        assert f"kestrel_trainer/spec/proto/{proto}" in names
    # every module of both packages in the source tree is in the wheel (a forgotten __init__.py drops a package)
    for root in (REPO / "trainer_image", REPO / "operator"):
        for src in root.glob("kestrel_*/**/*.py"):
            assert src.relative_to(root).as_posix() in names
    assert not any(n.startswith(("tests/", "e2e/", "bench/")) for n in names)


def test_sdist_builds_the_same_wheel_contents(dist):
    """`python -m build` made the wheel from the sdist, so the sdist is complete; check what it carries too."""
    sdist = _one(dist, f"{STEM}.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= names
    for proto in PROTOS:
        assert f"trainer_image/kestrel_trainer/spec/proto/{proto}" in names
    assert not any(n.startswith((".venv", "e2e/", "charts/", ".git/")) for n in names)


def test_wheel_installs_into_a_fresh_venv_and_its_commands_run(dist, tmp_path):
    """The wheel, --no-deps, into a new virtualenv that sees the dependencies of the project's venv (a plain .pth
    line, so the venv's editable install of this repo is not picked up): the commands run from the wheel's files."""
    wheel = _one(dist, f"{STEM}-py3-none-any.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, env=env)
    where = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m, kestrel_trainer.spec as s, kestrel_operator as o; "
                        f"print(s.__file__, o.__file__, m.version('{NAME}'))"],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where[:2]), where
    assert where[2] == VERSION
    assert sorted(p.name for p in (site / "kestrel_trainer" / "spec" / "proto").glob("*.proto")) == PROTOS
    for script, words in (("kestrel", ["train", "export"]), ("classification_tf1", ["train", "export"]),
                          ("kestrel-operator", ["usage"]), ("kestrel-worker", ["usage"]),
                          ("kubectl-kestrel", ["submit", "wait"])):
        exe = venv / "bin" / script
        assert exe.exists(), f"console script {script} not installed"
        proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)
        assert proc.returncode == 0, f"{script} --help: {proc.stderr[-2000:]}"
        assert all(w in proc.stdout for w in words), f"{script} --help: {proc.stdout[:500]}"
    # the spec package reads a real spec through the installed files (protobuf text format into the wheel's *_pb2)
    spec = REPO / "examples" / "specs" / "fashion_mnist_resnet18.txt"
    proc = subprocess.run([str(py), "-c", "import sys; from kestrel_trainer.spec.loader import load_spec; "
                           "print(load_spec(sys.argv[1], 'train').model.arch)", str(spec)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "resnet", proc.stderr[-2000:]
