"""The original's export / gen_trt_engine command lines run unchanged (issue 30, items 5 and 6).

Expected values come from the original's public source, not from our output: its export parser
(tao_tensorflow1_backend, cv/common/export/app.py: --batch_size 16, --opt_batch_size 1, --max_workspace_size
2 * (1 << 30) bytes, --target_opset 12, --onnx_route keras2onnx, -s, --cal_json_file, --results_dir), tao-deploy's
gen_trt_engine (-r, --cal_data_file, --batch_size 1, --max_workspace_size 2 "in Gb"), and the status.json
messages both write. An old UFF .etlt is built here from uff.MetaGraph's published field numbers and packed with
the facts file's recipe (independent of Kestrel's code).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import onnx
import pytest

from kestrel_trainer.cli.export_cmd import parse_workspace
from kestrel_trainer.cli.main import build_parser, main
from kestrel_trainer.errors import KestrelError
from tests.export.conftest import write_spec
from tests.nvidia_codec import nvidia_decrypt, nvidia_encrypt

KEY = "tao-flags-key"
GIB = 1024 ** 3


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def status_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "status.json").read_text().splitlines()]


@pytest.fixture(scope="module")
def spec_file(fashion, tmp_path_factory) -> Path:
    return write_spec(tmp_path_factory.mktemp("spec"), fashion)


@pytest.mark.parametrize("text,expected", [
    ("2", 2 * GIB),                  # tao-deploy's gen_trt_engine: gigabytes
    ("2147483648", 2 * GIB),         # the original's export: bytes (its default)
    ("1073741824", GIB),
    ("2G", 2 * GIB), ("2GiB", 2 * GIB), ("2gb", 2 * GIB),
    ("512M", 512 * 1024 ** 2), ("0.5G", GIB // 2),
])
def test_workspace_in_bytes_or_gigabytes(text, expected):
    assert parse_workspace(text) == expected


@pytest.mark.parametrize("text", ["4096", "2 bytes", "-1", "lots", "10K"])
def test_a_workspace_that_is_neither_is_refused_naming_the_flag(text):
    with pytest.raises(KestrelError) as err:
        parse_workspace(text)
    assert err.value.exit_code == 2 and err.value.message.startswith(f"--max_workspace_size {text}:")


def test_the_originals_defaults():
    parser = build_parser()
    export = parser.parse_args(["export", "-m", "m.tlt"])
    assert (export.batch_size, export.batches, export.min_batch_size, export.max_batch_size) == (16, 10, 1, 1)
    assert parse_workspace(export.max_workspace_size) == 2 * (1 << 30)
    engine = parser.parse_args(["gen_trt_engine", "-m", "m.onnx", "-r", "res", "--cal_data_file", "cal.tensorfile"])
    assert (engine.batch_size, engine.batches, engine.results_dir, engine.cal_data_file) == (
        1, 10, "res", "cal.tensorfile")
    assert parse_workspace(engine.max_workspace_size) == 2 * (1 << 30)
    from kestrel_trainer.export.run import EngineRequest, opt_batch

    assert opt_batch(EngineRequest(model="m", engine_file="e")) == 1  # the original's --opt_batch_size
    assert opt_batch(EngineRequest(model="m", engine_file="e", min_batch_size=4, max_batch_size=8)) == 4


def test_the_originals_export_line_runs(capsys, tmp_path, tiny_run, spec_file):
    """Every flag of the original's export at its default value, written out, plus -s (no engine here: accepted
    with a warning) and --cal_json_file."""
    out = tmp_path / "deploy" / "model.etlt"
    results = tmp_path / "logs"
    rc, stdout, err = run(capsys, "export", "-m", tiny_run, "-k", KEY, "-o", out, "-e", spec_file,
                          "--target_opset", 12, "--onnx_route", "keras2onnx", "--batch_size", 16, "--batches", 10,
                          "--max_workspace_size", 2 * GIB, "--max_batch_size", 1, "--min_batch_size", 1,
                          "--opt_batch_size", 1, "--static_batch_size", -1, "-s",
                          "--cal_json_file", tmp_path / "qat.json", "--results_dir", results)
    assert rc == 0, err
    assert "keras2onnx" in err and "tf2onnx" in err  # the alias is said, not silent
    assert "--strict_type_constraints applies when a TensorRT engine is built" in err  # accepted, not silent
    assert not (tmp_path / "qat.json").exists()  # the original writes it only for QAT models
    (length,), rest = struct.unpack("<i", out.read_bytes()[:4]), out.read_bytes()[4:]
    proto = onnx.load_model_from_string(nvidia_decrypt(rest, KEY))  # NVIDIA's codec as the oracle
    assert length == 0 and [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [12]
    lines = status_lines(results)
    assert [(s["status"], s["message"]) for s in lines] == [
        ("RUNNING", "Building exporter object."), ("RUNNING", "Exporting the model."),
        ("SUCCESS", "Export complete."), ("SUCCESS", "Export finished successfully.")]
    assert lines[2]["size"] == os.path.getsize(out)


def test_a_failed_export_says_so_in_status_json(capsys, tmp_path, tiny_run, spec_file):
    results = tmp_path / "logs"
    rc, _, err = run(capsys, "export", "-m", tiny_run, "-e", spec_file, "-o", tmp_path / "m.onnx",
                     "--target_opset", "11", "-r", results)
    assert rc == 2
    last = status_lines(results)[-1]
    assert last["status"] == "FAILURE" and last["message"].startswith("--target_opset 11: supported opsets are 12..18")
    assert last["message"] in err


def test_gen_trt_engine_with_results_dir_and_tensorfile(capsys, tmp_path, tiny_run, spec_file, fashion):
    deploy = tmp_path / "deploy"
    assert run(capsys, "export", "-m", tiny_run, "-e", spec_file, "-o", deploy / "m.onnx", "--data_type", "int8",
               "--cal_image_dir", fashion / "train", "--cal_data_file", deploy / "cal.tensorfile",
               "--batches", 2, "--batch_size", 4)[0] == 0
    results = tmp_path / "engine_logs"
    rc, _, err = run(capsys, "gen_trt_engine", "-m", deploy / "m.onnx", "-e", spec_file, "-r", results,
                     "--data_type", "int8", "--cal_data_file", deploy / "cal.tensorfile",
                     "--engine_file", deploy / "m.engine", "--max_workspace_size", 2, "-s")
    assert rc == 2 and "TensorRT is not installed" in err  # every flag parsed and checked; TensorRT is what is missing
    lines = status_lines(results)
    assert [s["status"] for s in lines] == ["STARTED", "FAILURE"]
    assert lines[0]["message"] == "Starting classification_tf1 gen_trt_engine."
    assert "TensorRT is not installed" in lines[1]["message"]
    assert not (deploy / "m.engine").exists()

    # the tensorfile's batches are what the engine's calibration cache is computed from
    from kestrel_trainer.export.calibration import parse_cache
    from kestrel_trainer.export.run import EngineRequest, prepare_engine

    onnx_bytes, profile, cache = prepare_engine(EngineRequest(
        model=str(deploy / "m.onnx"), engine_file=str(deploy / "m.engine"), data_type="int8",
        cal_data_file=str(deploy / "cal.tensorfile")))
    graph = onnx.load_model_from_string(onnx_bytes).graph
    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    _, scales = parse_cache(cache.decode())
    assert "predictions" in scales and set(scales) <= names
    assert profile.opt_shape[0] == 1  # the original's --opt_batch_size


# uff.MetaGraph (TensorRT's uff.proto): version=1, descriptor_core_version=2, descriptors=3, graphs=4.
def _field(number: int, wire: int, payload: bytes) -> bytes:
    def varint(v: int) -> bytes:
        out = b""
        while True:
            out += bytes([(v & 0x7F) | (0x80 if v > 0x7F else 0)])
            v >>= 7
            if not v:
                return out
    return varint(number << 3 | wire) + (payload if wire == 0 else varint(len(payload)) + payload)


def uff_bytes() -> bytes:
    descriptor = _field(1, 2, b"tensorflow_extension") + _field(2, 0, b"\x01")
    node = _field(1, 2, b"input_1") + _field(3, 2, b"Input")
    graph = _field(1, 2, b"main") + _field(2, 2, node)
    return _field(1, 0, b"\x01") + _field(2, 0, b"\x01") + _field(3, 2, descriptor) + _field(4, 2, graph)


def old_uff_etlt(path: Path, key: str) -> Path:
    """The original's UFF .etlt: int32 LE input-node-name length, the name, then NVIDIA's encrypt_stream of the UFF
    bytes (nonce + AES-256-CTR)."""
    name = b"input_1"
    path.write_bytes(struct.pack("<i", len(name)) + name + nvidia_encrypt(uff_bytes(), key))
    return path


@pytest.mark.parametrize("key", [KEY, "not-the-key"])
def test_an_old_uff_etlt_is_named_not_called_a_wrong_key(capsys, tmp_path, spec_file, key):
    etlt = old_uff_etlt(tmp_path / "old.etlt", KEY)
    for argv in (["evaluate", "-m", etlt, "-e", spec_file, "-k", key],
                 ["gen_trt_engine", "-m", etlt, "-k", key, "--engine_file", tmp_path / "m.engine"]):
        rc, _, err = run(capsys, *argv)
        lines = [line for line in err.splitlines() if "error:" in line]
        assert rc == 2 and len(lines) == 1, err
        assert "UFF models are not supported; re-export with" in lines[0] and str(etlt) in lines[0]
        assert "wrong key" not in lines[0]


def test_uff_payload_without_a_name_is_recognised_and_onnx_is_not():
    from kestrel_trainer.export.onnx_model import keras_to_onnx, looks_like_uff
    from tests.export.conftest import tiny_model

    assert looks_like_uff(uff_bytes())
    assert not looks_like_uff(keras_to_onnx(tiny_model()).SerializeToString())
    assert not looks_like_uff(os.urandom(4096))


def test_a_results_dir_that_cannot_be_written_is_one_line(capsys, tmp_path, tiny_run, spec_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for argv in (["export", "-m", tiny_run, "-e", spec_file, "-o", tmp_path / "m.onnx"],
                 ["gen_trt_engine", "-m", tmp_path / "m.onnx", "--engine_file", tmp_path / "m.engine"]):
        rc, _, err = run(capsys, *argv, "-r", blocker / "logs")
        lines = [line for line in err.splitlines() if "error:" in line]
        assert rc == 2 and len(lines) == 1 and f"-r/--results_dir {blocker / 'logs'}: cannot write" in lines[0]
    assert not (tmp_path / "m.onnx").exists()
