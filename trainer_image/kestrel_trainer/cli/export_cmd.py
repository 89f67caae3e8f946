"""`kestrel export` and `kestrel gen_trt_engine` (and their `classification_tf1` twins).

Thin: parse the original's flags into requests for kestrel_trainer.export.run, print what was written.
"""

from __future__ import annotations

import argparse

from kestrel_trainer.cli.common import (
    add_common_task_arguments,
    add_key_argument,
    require_key_for,
    resolve_key,
    setup_logging,
)

ORDER = 70
DATA_TYPE_HELP = "engine precision: fp32, fp16 or int8 (default fp32)"


def _spec(path):
    if not path:
        return None
    from kestrel_trainer.spec import load_spec

    return load_spec(path, "export")


def _add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data_type", default="fp32", help=DATA_TYPE_HELP)
    p.add_argument("--engine_file", default=None, help="TensorRT engine to build (needs TensorRT and a GPU)")
    p.add_argument("--cal_cache_file", default=None,
                   help="int8: TensorRT calibration cache to write, or to reuse when it exists (default: "
                   "cal.bin beside the output)")
    p.add_argument("--cal_image_dir", default=None, help="int8: images to calibrate on (spec preprocessing)")
    p.add_argument("--batches", type=int, default=10, help="int8: calibration batches (default 10)")
    p.add_argument("--batch_size", type=int, default=8, help="int8: calibration batch size (default 8)")
    p.add_argument("--min_batch_size", type=int, default=1, help="engine profile: smallest batch (default 1)")
    p.add_argument("--opt_batch_size", type=int, default=None,
                   help="engine profile: batch to optimise for (default --max_batch_size)")
    p.add_argument("--max_batch_size", type=int, default=1,
                   help="engine profile: largest batch; DeepStream batch-size (default 1)")
    p.add_argument("--max_workspace_size", type=int, default=1 << 30,
                   help="TensorRT workspace in bytes (default 1073741824)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")


def run_export(args: argparse.Namespace) -> int:
    from kestrel_trainer.export.run import ExportRequest
    from kestrel_trainer.export.run import run_export as export

    spec = _spec(args.experiment_spec)
    setup_logging(args.log_file, args.verbose)
    key = resolve_key(args)
    require_key_for(args.model_path, key)
    req = ExportRequest(
        model=args.model_path, output=args.output_file, key=key, spec=spec, classmap=args.classmap,
        gen_ds_config=args.gen_ds_config, data_type=args.data_type, target=args.target,
        cal_image_dir=args.cal_image_dir, cal_data_file=args.cal_data_file, cal_cache_file=args.cal_cache_file,
        batches=args.batches, batch_size=args.batch_size, min_batch_size=args.min_batch_size,
        opt_batch_size=args.opt_batch_size, max_batch_size=args.max_batch_size,
        max_workspace_size=args.max_workspace_size, engine_file=args.engine_file, target_opset=args.target_opset,
        static_batch_size=args.static_batch_size if args.static_batch_size and args.static_batch_size > 0 else None,
        force=args.force, parity_tolerance=args.parity_tolerance)
    summary = export(req)
    print(summary["parity"].line())
    if "int8_parity" in summary:
        print(f"int8 (QDQ): {summary['int8_parity'].line()}")
    for path in summary["written"]:
        print(f"wrote {path}")
    return 0


def run_engine(args: argparse.Namespace) -> int:
    from kestrel_trainer.export.run import EngineRequest, run_gen_trt_engine

    spec = _spec(args.experiment_spec)
    setup_logging(args.log_file, args.verbose)
    key = resolve_key(args)
    require_key_for(args.model_path, key)
    if not args.engine_file:
        from kestrel_trainer.export.onnx_model import ExportError

        raise ExportError("gen_trt_engine needs --engine_file FILE")
    req = EngineRequest(
        model=args.model_path, engine_file=args.engine_file, key=key, spec=spec, data_type=args.data_type,
        cal_cache_file=args.cal_cache_file, cal_image_dir=args.cal_image_dir, batches=args.batches,
        batch_size=args.batch_size, min_batch_size=args.min_batch_size, opt_batch_size=args.opt_batch_size,
        max_batch_size=args.max_batch_size, max_workspace_size=args.max_workspace_size, force=args.force)
    print(f"wrote {run_gen_trt_engine(req)}")
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
    p.add_argument("--target", default="tensorrt",
                   help="tensorrt (default; int8 writes a calibration cache) or onnxruntime (int8 writes a "
                   "quantized QDQ model)")
    p.add_argument("--cal_data_file", default=None,
                   help="int8: the original's tensorfile of calibration batches (read, or written from "
                   "--cal_image_dir)")
    p.add_argument("--target_opset", type=int, default=17, help="ONNX opset, 13..18 (default 17)")
    p.add_argument("--static_batch_size", type=int, default=None, help="fixed batch size (default: dynamic)")
    p.add_argument("--parity_tolerance", type=float, default=1e-4,
                   help="fail when Keras and ONNX Runtime differ by more (default 1e-4)")
    p.add_argument("--strict_type_constraints", action="store_true", help="accepted for compatibility; unused")
    p.add_argument("--force_ptq", action="store_true", help="accepted for compatibility; unused")
    p.add_argument("--onnx_route", default="tf2onnx", choices=["tf2onnx"], help="accepted for compatibility")
    _add_engine_arguments(p)
    add_common_task_arguments(p)
    p.set_defaults(func=run_export)

    g = subparsers.add_parser("gen_trt_engine", help="build a TensorRT engine (needs TensorRT and an NVIDIA GPU)")
    g.add_argument("-m", "--model_path", "--model", dest="model_path", required=True,
                   help=".onnx, .etlt (or a .tlt/.hdf5, converted first)")
    g.add_argument("-e", "--experiment_spec_file", "--experiment_spec", dest="experiment_spec", default=None,
                   metavar="SPEC")
    add_key_argument(g)
    _add_engine_arguments(g)
    add_common_task_arguments(g)
    g.set_defaults(func=run_engine)
