"""The import contracts in pyproject.toml ([tool.importlinter], run by scripts/test.sh as `lint-imports`) hold on
this checkout, and each kind of layer break fails them, naming the import: checked on a copy of both packages
with one bad import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = {"kestrel_trainer": REPO / "trainer_image", "kestrel_operator": REPO / "operator"}


def _lint_imports(root: Path, roots: list[Path]) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is not installed (import-linter, in the dev extra: bash scripts/setup.sh)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(r) for r in roots)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_this_checkout_keeps_every_contract() -> None:
    proc = _lint_imports(REPO, list(PACKAGES.values()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module,bad,broken", [
    # the operator's lower layers never import the kopf handlers
    ("kestrel_operator/manifests/check.py", "from kestrel_operator.handlers import reconcile",
     "kestrel_operator.manifests.check -> kestrel_operator.handlers.reconcile"),
    # the operator takes nothing from the trainer but its spec package (no TensorFlow in the operator)
    ("kestrel_operator/resources/types.py", "from kestrel_trainer.models import registry",
     "kestrel_operator.resources.types -> kestrel_trainer.models.registry"),
    # data sits below the commands: the input pipeline never imports training
    ("kestrel_trainer/data/stats.py", "from kestrel_trainer.train import callbacks",
     "kestrel_trainer.data.stats -> kestrel_trainer.train.callbacks"),
    # commands are independent of each other
    ("kestrel_trainer/evaluate.py", "from kestrel_trainer.inference import run_inference",
     "kestrel_trainer.evaluate -> kestrel_trainer.inference"),
], ids=["operator-upwards", "operator-to-trainer-models", "trainer-upwards", "trainer-sibling-commands"])
def test_a_bad_import_breaks_the_contracts(tmp_path: Path, module: str, bad: str, broken: str) -> None:
    roots = []
    for package, parent in PACKAGES.items():
        root = tmp_path / parent.name
        shutil.copytree(parent / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
        roots.append(root)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = next(r / module for r in roots if (r / module).exists())
    target.write_text(target.read_text() + f"\n{bad}  # deliberately against the layers\n")
    proc = _lint_imports(tmp_path, roots)
    assert proc.returncode != 0, proc.stdout
    assert broken in proc.stdout.replace("\n", " "), proc.stdout
