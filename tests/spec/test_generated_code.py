"""The committed protobuf modules match the .proto files, and the spec package needs no TensorFlow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PROTO_DIR = REPO / "trainer_image" / "kestrel_trainer" / "spec" / "proto"


def test_generated_pb2_modules_are_fresh(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    work = tmp_path / "kestrel_trainer" / "spec" / "proto"
    work.mkdir(parents=True)
    for proto in PROTO_DIR.glob("*.proto"):
        shutil.copy(proto, work / proto.name)
    args = ["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}"]
    args += [str(Path("kestrel_trainer/spec/proto") / p.name) for p in PROTO_DIR.glob("*.proto")]
    cwd = Path.cwd()
    try:
        import os

        os.chdir(tmp_path)
        assert protoc.main(args) == 0
    finally:
        os.chdir(cwd)
    for generated in work.glob("*_pb2.py"):
        committed = PROTO_DIR / generated.name
        assert committed.exists(), f"{committed.name} is not committed; run scripts/gen_proto.sh"
        assert committed.read_text() == generated.read_text(), (
            f"{committed.name} is stale; run scripts/gen_proto.sh"
        )


def test_spec_package_imports_without_tensorflow():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tensorflow' or name.startswith('tensorflow.'):\n"
        "            raise ImportError('tensorflow blocked for this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import kestrel_trainer, kestrel_trainer.spec, kestrel_trainer.cli.main\n"
        "from kestrel_trainer.spec import parse_spec_text\n"
        "print(parse_spec_text('model_config { arch: \"vgg\" }').model.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "vgg16"
