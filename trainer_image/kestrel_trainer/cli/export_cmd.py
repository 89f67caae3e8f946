"""`kestrel export` and `kestrel gen_trt_engine` (and their `classification_tf1` twins).

Thin: parse the original's flags into requests for kestrel_trainer.export.run, print what was written.
"""

from __future__ import annotations

import argparse

from kestrel_trainer import storage
from kestrel_trainer.cli.common import (
    add_common_task_arguments,
    add_key_argument,
    require_key_for,
    resolve_key,
    setup_logging,
    stage_model,
    stage_spec_inputs,
    task_status,
)
from kestrel_trainer.errors import KestrelError
from kestrel_trainer.export import DATA_TYPES, TARGETS

ORDER = 70
DATA_TYPE_HELP = "engine precision: fp32, fp16 or int8 (default fp32)"
STRICT_HELP = ("int8 engines: keep layers in int8 (no FP16 fallback), the original's strict type constraints; "
               "refused without an int8 engine to build")
GIB = 1 << 30
MIB = 1 << 20
# The original's defaults, per command: its export (tao_tensorflow1_backend, common/export/app.py) and
# tao-deploy's gen_trt_engine, which replaced export's engine building. --max_workspace_size's default is 2 GiB
# in both (export counts bytes, tao-deploy gigabytes: parse_workspace reads either).
DEFAULTS = {
    "export": {"batch_size": 16, "batches": 10, "min_batch_size": 1, "max_batch_size": 1, "target_opset": 17},
    "gen_trt_engine": {"batch_size": 1, "batches": 10, "min_batch_size": 1, "max_batch_size": 1},
}
ONNX_ROUTES = ("tf2onnx", "keras2onnx")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": MIB, "g": GIB, "t": 1 << 40}


def parse_workspace(text) -> int:
    """--max_workspace_size in bytes. The original's export takes bytes (default 2147483648), tao-deploy's
    gen_trt_engine gigabytes (default 2): a bare number up to 1024 is gigabytes, from 1 MiB up bytes, and a
    unit (512M, 2G, 2GiB, 2GB: binary multiples, as TensorRT counts) says it outright."""
    import re

    flag = f"--max_workspace_size {text}"
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise KestrelError(f"{flag}: give bytes, gigabytes (1..1024) or a size with a unit such as 2G or 512M",
                           exit_code=2)
    value, unit = float(match.group(1)), match.group(2).lower()
    if unit or str(text).strip().lower().endswith("b"):
        size = int(value * _UNITS[unit])
    elif value <= 1024:
        size = int(value * GIB)  # tao-deploy's unit: "2" is 2 GiB, never 2 bytes
    else:
        size = int(value)
    if size < MIB:
        raise KestrelError(f"{flag}: {size} bytes is too small for TensorRT; give bytes (>= 1 MiB), gigabytes "
                           "(1..1024) or a size with a unit such as 2G", exit_code=2)
    return size


def _spec(path):
    if not path:
        return None
    from kestrel_trainer.spec import load_spec

    return load_spec(path, "export")


def _add_engine_arguments(p: argparse.ArgumentParser, command: str) -> None:
    d = DEFAULTS[command]
    p.add_argument("-r", "--results_dir", default=None,
                   help="where status.json goes (the original's status log; none without -r)")
    p.add_argument("--data_type", default="fp32", choices=DATA_TYPES, help=DATA_TYPE_HELP)
    p.add_argument("--engine_file", default=None, help="TensorRT engine to build (needs TensorRT and a GPU)")
    p.add_argument("--cal_cache_file", default=None,
                   help="int8: TensorRT calibration cache to write, or to reuse when it exists (default: "
                   "cal.bin beside the output)")
    p.add_argument("--cal_image_dir", default=None, help="int8: images to calibrate on (spec preprocessing)")
    p.add_argument("--cal_data_file", default=None,
                   help="int8: the original's tensorfile of calibration batches (read, or written from "
                   "--cal_image_dir)")
    p.add_argument("--batches", type=int, default=d["batches"],
                   help=f"int8: calibration batches (default {d['batches']})")
    p.add_argument("--batch_size", type=int, default=d["batch_size"],
                   help=f"int8: calibration batch size (default {d['batch_size']}, the original's)")
    p.add_argument("--min_batch_size", type=int, default=d["min_batch_size"],
                   help="engine profile: smallest batch (default 1)")
    p.add_argument("--opt_batch_size", type=int, default=None,
                   help="engine profile: batch to optimise for (default 1, the original's; --min_batch_size "
                   "when that is larger)")
    p.add_argument("--max_batch_size", type=int, default=d["max_batch_size"],
                   help="engine profile: largest batch; DeepStream batch-size (default 1)")
    p.add_argument("--max_workspace_size", default=str(2 * GIB),
                   help="TensorRT workspace: bytes (the original's export), gigabytes when 1..1024 (tao-deploy's "
                   "unit), or with a unit: 2G, 512M (default 2 GiB)")
    p.add_argument("-s", "--strict_type_constraints", action="store_true", help=STRICT_HELP)
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")


def _note_compatibility_flags(args: argparse.Namespace) -> None:
    """Flags the original has whose meaning Kestrel covers another way: say what happens, once."""
    import logging

    log = logging.getLogger("kestrel.export")
    if getattr(args, "onnx_route", "tf2onnx") == "keras2onnx":
        log.info("--onnx_route keras2onnx: Kestrel converts with tf2onnx, its one route (keras2onnx does not "
                 "support TensorFlow 2.15); the exported graph is checked against Keras either way")
    if getattr(args, "cal_json_file", None):
        log.info("--cal_json_file %s: the original writes it only for QAT-trained models (their tensor scales); "
                 "Kestrel models are never QAT, so nothing is written there (int8 scales go to the calibration "
                 "cache)", args.cal_json_file)


def run_export(args: argparse.Namespace) -> int:
    setup_logging(args.log_file, args.verbose)
    # s3:// (docs/storage.md): -r is a local folder uploaded as it is written, so status.json goes to the bucket
    args.results_dir = storage.output_dir(args.results_dir)
    with task_status(args.results_dir, "export") as status:
        from kestrel_trainer.train import devices

        # an explicit --gpus N (or the pod's KESTREL_REQUIRE_GPUS) with fewer GPUs: one line; the CPU is not news
        devices.check(args, announce=False)
        if status:
            status.write("RUNNING", "Building exporter object.")
        summary = _export(args, status)
        if status:
            status.write("SUCCESS", "Export complete.", size=summary["size"])
            status.write("SUCCESS", "Export finished successfully.")
    print(summary["parity"].line())
    if "int8_parity" in summary:
        print(f"int8 (QDQ): {summary['int8_parity'].line()}")
    for path in summary["written"]:
        print(storage.describe(f"wrote {path}"))
    return 0


def _export(args: argparse.Namespace, status) -> dict:
    import os

    from kestrel_trainer.export.run import ExportRequest
    from kestrel_trainer.export.run import run_export as export

    spec = _spec(args.experiment_spec)
    key = resolve_key(args)
    require_key_for(args.model_path, key)
    workspace = parse_workspace(args.max_workspace_size)
    _note_compatibility_flags(args)
    _stage_paths(args, key)
    args.triton_repository = storage.output_dir(args.triton_repository)
    if spec is not None:
        spec = stage_spec_inputs(spec, evaluate=True)  # parity images from eval_config's data
    req = ExportRequest(
        model=args.model_path, output=args.output_file, key=key, spec=spec, classmap=args.classmap,
        gen_ds_config=args.gen_ds_config, data_type=args.data_type, target=args.target,
        cal_image_dir=args.cal_image_dir, cal_data_file=args.cal_data_file, cal_cache_file=args.cal_cache_file,
        batches=args.batches, batch_size=args.batch_size, min_batch_size=args.min_batch_size,
        opt_batch_size=args.opt_batch_size, max_batch_size=args.max_batch_size,
        max_workspace_size=workspace, engine_file=args.engine_file, target_opset=args.target_opset,
        static_batch_size=args.static_batch_size if args.static_batch_size and args.static_batch_size > 0 else None,
        force=args.force, parity_tolerance=args.parity_tolerance, triton_repository=args.triton_repository,
        strict_type_constraints=args.strict_type_constraints)
    if status:
        status.write("RUNNING", "Exporting the model.")
    summary = export(req)
    summary["size"] = os.path.getsize(summary["output"])
    return summary


def _stage_paths(args: argparse.Namespace, key) -> None:
    """s3:// (docs/storage.md): local copies of the inputs; outputs written into folders uploaded as they are
    written (an existing --cal_cache_file / --cal_data_file object is brought in, to be reused as locally)."""
    from kestrel_trainer.export.run import default_output

    if hasattr(args, "output_file") and args.output_file is None and storage.is_url(args.model_path):
        args.output_file = default_output(args.model_path, key)  # beside the model, in the bucket
    args.model_path = stage_model(args.model_path)
    args.classmap = storage.input_path(getattr(args, "classmap", None))
    args.cal_image_dir = storage.input_path(args.cal_image_dir)
    for name in ("output_file", "cal_cache_file", "cal_data_file", "engine_file"):
        if hasattr(args, name):
            setattr(args, name, storage.output_file(getattr(args, name)))


def run_engine(args: argparse.Namespace) -> int:
    from kestrel_trainer.export.run import EngineRequest, run_gen_trt_engine

    setup_logging(args.log_file, args.verbose)
    # s3:// (docs/storage.md): -r is a local folder uploaded as it is written, so status.json goes to the bucket
    args.results_dir = storage.output_dir(args.results_dir)
    with task_status(args.results_dir, "gen_trt_engine", "Starting classification_tf1 gen_trt_engine.") as status:
        spec = _spec(args.experiment_spec)
        key = resolve_key(args)
        require_key_for(args.model_path, key)
        workspace = parse_workspace(args.max_workspace_size)
        if not args.engine_file:
            from kestrel_trainer.export.onnx_model import ExportError

            raise ExportError("gen_trt_engine needs --engine_file FILE")
        _stage_paths(args, key)
        req = EngineRequest(
            model=args.model_path, engine_file=args.engine_file, key=key, spec=spec, data_type=args.data_type,
            cal_cache_file=args.cal_cache_file, cal_image_dir=args.cal_image_dir, cal_data_file=args.cal_data_file,
            batches=args.batches, batch_size=args.batch_size, min_batch_size=args.min_batch_size,
            opt_batch_size=args.opt_batch_size, max_batch_size=args.max_batch_size, max_workspace_size=workspace,
            force=args.force, strict_type_constraints=args.strict_type_constraints)
        written = run_gen_trt_engine(req)
        if status:
            status.write("SUCCESS", "Gen_trt_engine finished successfully.")
    print(storage.describe(f"wrote {written}"))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a trained model to ONNX or .etlt (DeepStream, TensorRT)")
    p.add_argument("-m", "--model_path", "--model", dest="model_path", required=True, help="trained .tlt/.hdf5")
    p.add_argument("-o", "--output_file", default=None,
                   help=".onnx (plain) or .etlt (encrypted, the original's format); default: the model's "
                   "name with .etlt (with a key) or .onnx")
    p.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="experiment_spec", default=None,
                   metavar="SPEC", help="spec: preprocessing for parity, calibration and DeepStream")
    add_key_argument(p)
    p.add_argument("-cm", "--classmap_json", dest="classmap", default=None,
                   help="classmap.json for labels.txt (default: the training run's)")
    p.add_argument("--gen_ds_config", action="store_true", help="write labels.txt and nvinfer_config.txt")
    p.add_argument("--target", default="tensorrt", choices=TARGETS,
                   help="tensorrt (default; int8 writes a calibration cache) or onnxruntime (int8 writes a "
                   "quantized QDQ model)")
    p.add_argument("--target_opset", type=int, default=DEFAULTS["export"]["target_opset"],
                   help="ONNX opset, 12..18 (default 17; the original's default 12 is accepted)")
    p.add_argument("--static_batch_size", type=int, default=None, help="fixed batch size (default: dynamic)")
    p.add_argument("--parity_tolerance", type=float, default=1e-4,
                   help="fail when Keras and ONNX Runtime differ by more (default 1e-4)")
    p.add_argument("--force_ptq", action="store_true", help="accepted for compatibility; unused")
    p.add_argument("--onnx_route", default="tf2onnx", choices=ONNX_ROUTES,
                   help="tf2onnx (Kestrel's one route); the original's default keras2onnx is accepted as an alias")
    p.add_argument("--cal_json_file", default=None,
                   help="the original's QAT tensor-scale file; Kestrel models are never QAT, so nothing is "
                   "written (accepted for compatibility)")
    p.add_argument("--triton_repository", default=None, metavar="DIR",
                   help="also write a Triton model repository: DIR/<output name>/config.pbtxt, 1/model.onnx, "
                   "labels.txt (ONNX Runtime backend, dynamic batching up to --max_batch_size)")
    _add_engine_arguments(p, "export")
    add_common_task_arguments(p)
    p.set_defaults(func=run_export)

    g = subparsers.add_parser("gen_trt_engine", help="build a TensorRT engine (needs TensorRT and an NVIDIA GPU)")
    g.add_argument("-m", "--model_path", "--model", dest="model_path", required=True,
                   help=".onnx, .etlt (or a .tlt/.hdf5, converted first)")
    g.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="experiment_spec", default=None,
                   metavar="SPEC", help="spec file (optional): its preprocessing for int8 calibration images")
    add_key_argument(g, writes_models=False)
    _add_engine_arguments(g, "gen_trt_engine")
    add_common_task_arguments(g)
    g.set_defaults(func=run_engine)
