"""`kestrel export` / `gen_trt_engine` end to end on a saved model and real images, and every bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest

from kestrel_trainer.cli.main import build_parser, main
from tests.export.conftest import classmap_names, save_run, tiny_model, write_spec
from tests.export.test_deepstream import nvinfer_labels

KEY = "s3cret-export-key"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("kestrel: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def spec_file(fashion, tmp_path_factory) -> Path:
    return write_spec(tmp_path_factory.mktemp("spec"), fashion)


def results(path: Path) -> dict:
    return json.loads((path / "results.json").read_text())


def test_etlt_with_deepstream_config_and_int8_cache_then_evaluate_the_artifact(
        capsys, tmp_path, tiny_run, spec_file, fashion):
    out = tmp_path / "deploy"
    rc, stdout, err = run(capsys, "export", "-m", tiny_run, "-o", out / "model.etlt", "-k", KEY, "-e", spec_file,
                          "--gen_ds_config", "--data_type", "int8", "--cal_image_dir", fashion / "train",
                          "--cal_data_file", out / "cal.tensorfile", "--batches", 2, "--batch_size", 8,
                          "--max_batch_size", 4)
    assert rc == 0, err
    assert "top-1 agreement 1.0000" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["cal.bin", "cal.tensorfile", "labels.txt", "model.etlt",
                                                     "nvinfer_config.txt"]
    assert nvinfer_labels((out / "labels.txt").read_text()) == [classmap_names(fashion)]  # one output layer
    config = (out / "nvinfer_config.txt").read_text()
    for line in ("tlt-encoded-model=model.etlt", "int8-calib-file=cal.bin", "batch-size=4", "network-mode=1",
                 "infer-dims=1;32;32", "num-detected-classes=10", "model-color-format=2"):
        assert line in config.splitlines()
    for text_file in ("nvinfer_config.txt", "labels.txt", "cal.bin"):
        assert KEY not in (out / text_file).read_text()

    # evaluate and inference run the deployed artifact and agree with the Keras model it came from
    assert run(capsys, "evaluate", "-m", out / "model.etlt", "-k", KEY, "-e", spec_file, "-r", tmp_path / "ev_etlt",
               "-cm", fashion / "classmap.json")[0] == 0
    assert run(capsys, "evaluate", "-m", tiny_run, "-e", spec_file, "-r", tmp_path / "ev_keras",
               "-cm", fashion / "classmap.json")[0] == 0
    deployed, keras = results(tmp_path / "ev_etlt"), results(tmp_path / "ev_keras")
    assert deployed["confusion_matrix"] == keras["confusion_matrix"]
    assert deployed["loss"] == pytest.approx(keras["loss"], abs=1e-4)
    rc, stdout, _ = run(capsys, "inference", "-m", out / "model.etlt", "-k", KEY, "-e", spec_file,
                        "-i", sorted((fashion / "test").rglob("*.png"))[0], "-cm", fashion / "classmap.json")
    assert rc == 0 and "(" in stdout


def test_int8_qdq_for_onnxruntime(capsys, tmp_path, spread_run, fashion):
    """On a model whose top-1 spreads over the classes (a tiny model that gives one class to nearly every image
    can make the agreement of two near-ties anything)."""
    tiny_run, spec_file = spread_run
    out = tmp_path / "model_int8.onnx"
    rc, stdout, err = run(capsys, "export", "-m", tiny_run, "-o", out, "-e", spec_file, "--data_type", "int8",
                          "--target", "onnxruntime", "--cal_image_dir", fashion / "train", "--batches", 4)
    assert rc == 0, err
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "weights are stored as int8"
    agreement = float(stdout.split("int8 (QDQ): ")[1].split("top-1 agreement ")[1].split()[0])
    assert agreement >= 0.75
    assert not (tmp_path / "cal.bin").exists()  # no TensorRT cache for the onnxruntime target
    assert run(capsys, "evaluate", "-m", out, "-e", spec_file, "-r", tmp_path / "ev",
               "-cm", fashion / "classmap.json")[0] == 0


@pytest.mark.parametrize("case,extra,message", [
    ("exists", [], "exists: pass --force to overwrite it"),
    ("dtype", ["--data_type", "int4"], "argument --data_type: invalid choice: 'int4' (choose from 'fp32', 'fp16', "
                                        "'int8')"),
    ("opset", ["--target_opset", "11"], "--target_opset 11: supported opsets are 12..18"),
    ("int8", ["--data_type", "int8"], "--data_type int8 needs calibration data"),
    ("empty", ["--data_type", "int8", "--cal_image_dir", "EMPTY"], "--cal_image_dir: no images"),
    ("suffix", ["-o", "OUT/model.uff"], "must end in .onnx (plain) or .etlt (encrypted)"),
    ("etlt-no-key", ["-o", "OUT/model.etlt"], "an .etlt is encrypted: give the key"),
    ("engine", ["--engine_file", "OUT/model.engine"], "TensorRT is not installed"),
    ("qdq-deepstream",
     ["--data_type", "int8", "--target", "onnxruntime", "--cal_image_dir", "EMPTY", "--gen_ds_config"],
     "--gen_ds_config with --target onnxruntime --data_type int8: DeepStream's TensorRT cannot build the uint8 QDQ"),
    ("triton-static", ["--triton_repository", "OUT/triton", "--static_batch_size", "4"],
     "--triton_repository needs a dynamic batch"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, tiny_run, spec_file, case, extra,
                                                         message, monkeypatch):
    monkeypatch.delenv("KESTREL_KEY", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "EMPTY").mkdir()
    if case == "exists":
        (out / "model.onnx").write_bytes(b"old")
    extra = [str(e).replace("OUT", str(out)).replace("EMPTY", str(tmp_path / "EMPTY")) for e in extra]
    argv = ["export", "-m", tiny_run, "-e", spec_file, "-o", out / "model.onnx", *extra]
    rc, _, err = run(capsys, *argv)
    assert rc == 2
    assert message in error_line(err)
    assert sorted(p.name for p in out.iterdir()) == (["model.onnx"] if case == "exists" else [])
    if case == "exists":
        assert (out / "model.onnx").read_bytes() == b"old"


def test_wrong_key_on_a_tlt_is_one_line(capsys, tmp_path, fashion, spec_file):
    tlt = save_run(tiny_model(), tmp_path / "run", fashion, key="right-key")
    rc, _, err = run(capsys, "export", "-m", tlt, "-k", "wrong-key", "-e", spec_file, "-o", tmp_path / "m.onnx")
    assert rc == 2 and "wrong key or corrupt file" in error_line(err)
    assert not (tmp_path / "m.onnx").exists()


def test_gen_trt_engine_prepares_then_says_tensorrt_is_missing(capsys, tmp_path, tiny_run, spec_file):
    onnx_path = tmp_path / "m.onnx"
    assert run(capsys, "export", "-m", tiny_run, "-e", spec_file, "-o", onnx_path)[0] == 0
    rc, _, err = run(capsys, "gen_trt_engine", "-m", onnx_path, "-e", spec_file, "--data_type", "fp16",
                     "--engine_file", tmp_path / "m.engine", "--min_batch_size", 1, "--opt_batch_size", 4,
                     "--max_batch_size", 8)
    assert rc == 2 and "TensorRT is not installed" in error_line(err)
    assert not (tmp_path / "m.engine").exists()
    rc, _, err = run(capsys, "gen_trt_engine", "-m", onnx_path, "--data_type", "int8", "--engine_file",
                     tmp_path / "m.engine")
    assert rc == 2 and "needs an existing --cal_cache_file" in error_line(err)
    rc, _, err = run(capsys, "gen_trt_engine", "-m", onnx_path, "--data_type", "fp16", "--strict_type_constraints",
                     "--engine_file", tmp_path / "m.engine")
    assert rc == 2 and "TensorRT is not installed" in error_line(err)  # accepted: only TensorRT is missing


def test_operator_rendered_export_command_parses():
    from kestrel_operator.manifests.commands import trainer_command
    from kestrel_operator.manifests.gpu_mapping import GpuMapping
    from kestrel_operator.resources.parse import parse_resource
    from kestrel_operator.settings import Settings
    from tests.operator.conftest import export_body

    body = export_body(dataType="int8", genDsConfig=True, maxBatchSize=16, engineFile="/results/m.engine",
                       calibration={"imageDir": "/data/cal", "cacheFile": "/results/cal.bin", "batches": 10,
                                    "batchSize": 8},
                       volumes={"data": {"claimName": "datasets"}, "results": {"claimName": "results"}})
    res = parse_resource(body, Settings(default_image="kestrel-trainer:test"))
    run = "0123456789abcdef"
    res = dataclasses.replace(res, meta=dataclasses.replace(res.meta, run_hash=run))
    cmd = trainer_command(res, GpuMapping(1, 0, 1, 0, 0), "/results/model.tlt", has_spec=True,
                          output_path=f"/results/runs/{run}/export/exported.etlt")
    assert cmd[:2] == ["kestrel", "export"]
    args = build_parser().parse_args(cmd[1:])
    assert (args.model_path, args.output_file, args.data_type) == (
        "/results/model.tlt", f"/results/runs/{run}/export/exported.etlt", "int8")
    # The calibration cache may be reused across runs (an input too): where the resource says. The engine is an
    # output: in the run's folder, like every output.
    assert (args.cal_image_dir, args.cal_cache_file, args.batches, args.batch_size) == ("/data/cal",
                                                                                         "/results/cal.bin", 10, 8)
    assert (args.max_batch_size, args.engine_file, args.gen_ds_config) == (16, f"/results/runs/{run}/m.engine", True)
    assert args.func.__name__ == "run_export"
