"""The export and gen_trt_engine tasks: validate everything, compute everything, then write.

Nothing is written until every output has been computed and the parity check has passed, and each
file is written atomically, so a failed export leaves no half-written file behind.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from kestrel_trainer.errors import DataError
from kestrel_trainer.export import DATA_TYPES, TARGETS, calibration, deepstream, parity, triton
from kestrel_trainer.export.onnx_model import DEFAULT_OPSET, DEPLOY_SUFFIXES, ETLT_SUFFIX, ExportError
from kestrel_trainer.export.tensorrt_engine import DEFAULT_WORKSPACE

log = logging.getLogger("kestrel.export")

PARITY_IMAGES = 16
QDQ_MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear arrived in opset 13


@dataclass
class ExportRequest:
    model: str
    output: Optional[str] = None
    key: Optional[str] = None
    spec: object = None  # ExperimentSpec or None
    classmap: Optional[str] = None
    gen_ds_config: bool = False
    data_type: str = "fp32"
    target: str = "tensorrt"
    cal_image_dir: Optional[str] = None
    cal_data_file: Optional[str] = None
    cal_cache_file: Optional[str] = None
    batches: int = calibration.DEFAULT_BATCHES
    batch_size: int = calibration.DEFAULT_BATCH_SIZE
    min_batch_size: int = 1
    opt_batch_size: Optional[int] = None
    max_batch_size: int = 1
    max_workspace_size: int = DEFAULT_WORKSPACE
    engine_file: Optional[str] = None
    target_opset: int = DEFAULT_OPSET
    static_batch_size: Optional[int] = None
    force: bool = False
    parity_tolerance: float = parity.DEFAULT_TOLERANCE
    triton_repository: Optional[str] = None
    strict_type_constraints: bool = False


def opt_batch(req) -> int:
    """The engine profile's optimal batch: --opt_batch_size, by default the original's 1 (or --min_batch_size
    when that is larger, so that the default never contradicts it)."""
    return req.opt_batch_size if req.opt_batch_size is not None else max(1, req.min_batch_size)


def default_output(model: str, key: Optional[str]) -> str:
    """The original's default: the model's name with .etlt (encrypted); .onnx when there is no key."""
    return os.path.splitext(model)[0] + (ETLT_SUFFIX if key else ".onnx")


def _check_request(req: ExportRequest) -> None:
    from kestrel_trainer.export.onnx_model import check_opset

    if req.data_type not in DATA_TYPES:
        raise ExportError(f"--data_type {req.data_type}: must be one of {', '.join(DATA_TYPES)}")
    if req.target not in TARGETS:
        raise ExportError(f"--target {req.target}: must be one of {', '.join(TARGETS)}")
    check_opset(req.target_opset)
    if req.target == "onnxruntime" and req.data_type == "int8" and req.target_opset < QDQ_MIN_OPSET:
        raise ExportError(f"--target_opset {req.target_opset}: int8 QDQ models for onnxruntime need opset "
                          f"{QDQ_MIN_OPSET} or newer (per-channel weight scales)")
    suffix = os.path.splitext(req.output)[1].lower()
    if suffix not in DEPLOY_SUFFIXES:
        raise ExportError(f"-o {req.output}: the output must end in .onnx (plain) or .etlt (encrypted)")
    if suffix == ETLT_SUFFIX and not req.key:
        raise ExportError(f"-o {req.output}: an .etlt is encrypted: give the key with -k or KESTREL_KEY")
    if os.path.splitext(req.model)[1].lower() in DEPLOY_SUFFIXES:
        raise ExportError(f"-m {req.model}: export takes a trained .tlt/.hdf5 model, not an exported one")
    if req.gen_ds_config and req.spec is None:
        raise ExportError("--gen_ds_config needs -e SPEC (the preprocessing DeepStream must reproduce)")
    if req.static_batch_size is not None and req.static_batch_size < 1:
        raise ExportError(f"--static_batch_size {req.static_batch_size}: must be >= 1")
    if req.batches < 1 or req.batch_size < 1:
        raise ExportError("--batches and --batch_size must be >= 1")
    if req.data_type == "int8":
        _check_int8_sources(req)
    if req.gen_ds_config and req.target == "onnxruntime" and req.data_type == "int8":
        raise ExportError("--gen_ds_config with --target onnxruntime --data_type int8: DeepStream's TensorRT cannot "
                          "build the uint8 QDQ model; for DeepStream export with --target tensorrt (int8 cache)")
    if req.triton_repository and req.static_batch_size:
        raise ExportError("--triton_repository needs a dynamic batch (Triton batches requests itself): drop "
                          "--static_batch_size")
    check_strict_type_constraints(req.strict_type_constraints, req.data_type, bool(req.engine_file))


def check_strict_type_constraints(strict: bool, data_type: str, engine: bool) -> None:
    """--strict_type_constraints is the original's switch for TensorRT engines (layers kept in the precision asked,
    no FP16 fallback for int8: tensorrt_engine.precision_flags). Without an engine to build there is nothing to
    constrain: accepted, as the original accepts it, with a line saying so rather than silently."""
    if strict and not engine:
        log.warning("--strict_type_constraints applies when a TensorRT engine is built (--engine_file or "
                    "gen_trt_engine): the %s ONNX/.etlt written here is the same with or without it", data_type)


def _check_int8_sources(req: ExportRequest) -> None:
    has_data = bool(req.cal_image_dir) or bool(req.cal_data_file and os.path.isfile(req.cal_data_file))
    if req.target == "onnxruntime" and not has_data:
        raise ExportError("--data_type int8 --target onnxruntime needs calibration data: --cal_image_dir DIR "
                          "or --cal_data_file FILE")
    if not has_data and not (req.cal_cache_file and os.path.isfile(req.cal_cache_file)):
        raise ExportError("--data_type int8 needs calibration data: --cal_image_dir DIR, --cal_data_file FILE "
                          "or an existing --cal_cache_file")
    if req.cal_image_dir and req.spec is None:
        raise ExportError("--cal_image_dir needs -e SPEC (calibration images get the spec's preprocessing)")


def _reuse_cache(req: ExportRequest) -> bool:
    """An existing cache is reused (the original's behaviour) unless new calibration data and --force."""
    exists = bool(req.cal_cache_file and os.path.isfile(req.cal_cache_file))
    fresh_data = bool(req.cal_image_dir or (req.cal_data_file and os.path.isfile(req.cal_data_file)))
    return exists and not (fresh_data and req.force)


def _outputs(req: ExportRequest) -> list[str]:
    out = [req.output]
    if req.data_type == "int8" and req.target == "tensorrt" and not _reuse_cache(req):
        out.append(req.cal_cache_file)
    if req.data_type == "int8" and req.cal_image_dir and req.cal_data_file:
        out.append(req.cal_data_file)
    if req.gen_ds_config:
        folder = os.path.dirname(os.path.abspath(req.output))
        out += [os.path.join(folder, deepstream.LABELS_FILE), os.path.join(folder, deepstream.CONFIG_FILE)]
    if req.engine_file:
        out.append(req.engine_file)
    if req.triton_repository:
        out += list(triton.paths(req.triton_repository, triton.model_name(req.output)).values())
    return out


def _refuse_existing(paths: list[str], force: bool) -> None:
    if force:
        return
    for path in paths:
        if os.path.exists(path):
            raise ExportError(f"{path} exists: pass --force to overwrite it")


def _parity_batch(req: ExportRequest, chw: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """Up to PARITY_IMAGES real images preprocessed by the spec, or random inputs without a spec or images."""
    from kestrel_trainer.data.folders import images_under

    if req.spec is not None:
        for folder in (req.spec.eval.eval_dataset_path, req.spec.train.val_dataset_path, req.cal_image_dir):
            if folder and os.path.isdir(folder):
                try:
                    files = images_under(folder)
                except DataError:
                    continue
                step = max(len(files) // PARITY_IMAGES, 1)  # spread over the classes' folders
                files = files[::step][:PARITY_IMAGES]
                batch = calibration.preprocessed(files, req.spec, PARITY_IMAGES, desc="parity images")
                return np.concatenate(batch), f"images of {folder}"
    c, h, w = chw
    log.warning("no spec or no images to check parity on: using random inputs")
    return parity.random_batch(PARITY_IMAGES, h, w, c), "random inputs"


def _calibration_files(req: ExportRequest) -> Optional[list[str]]:
    """The calibration images, checked before any conversion work (None when they are not needed)."""
    needed = req.data_type == "int8" and req.cal_image_dir and not (req.target == "tensorrt" and _reuse_cache(req))
    if not needed:
        return None
    return calibration.calibration_files(req.cal_image_dir, req.batches * req.batch_size, req.spec.eval.n_workers)


def _calibration_batches(req: ExportRequest, files: Optional[list[str]], chw: tuple[int, int, int]
                         ) -> list[np.ndarray]:
    if files is not None:
        batches = calibration.image_batches(files, req.spec, req.batch_size)
        log.info("calibrating on %d images of %s (%d batches)", len(files), req.cal_image_dir, len(batches))
    else:
        batches = calibration.read_tensorfile(req.cal_data_file)[:req.batches]
        log.info("calibrating on %d batches of %s", len(batches), req.cal_data_file)
    return _check_batch_shapes(batches, chw)


def _check_batch_shapes(batches: list[np.ndarray], chw: tuple[int, int, int]) -> list[np.ndarray]:
    for batch in batches:
        if tuple(batch.shape[1:]) != chw:
            raise DataError(f"calibration batch shape {tuple(batch.shape)} does not match the model's input "
                            f"N,{','.join(map(str, chw))}")
    return batches


def _class_names(req: ExportRequest, n_classes: int) -> list[str]:
    from kestrel_trainer.data.folders import class_names_from
    from kestrel_trainer.predict import default_classmap_path

    path = req.classmap or default_classmap_path(req.model)
    if not path:
        raise ExportError(f"labels need the class names: pass --classmap_json (none beside {req.model})")
    return class_names_from(path, n_classes)


def _relative(path: str, folder: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, folder) if os.path.dirname(path) == folder else path


def run_export(req: ExportRequest) -> dict:
    """Export `req.model`; returns a summary (paths written, parity figures)."""
    from kestrel_trainer.export import onnx_model
    from kestrel_trainer.export.tensorrt_engine import build_engine, optimization_profile, require_tensorrt
    from kestrel_trainer.model_io.files import load_model, write_atomic

    req.output = req.output or default_output(req.model, req.key)
    if req.data_type == "int8" and req.target == "tensorrt" and not req.cal_cache_file:
        req.cal_cache_file = os.path.join(os.path.dirname(os.path.abspath(req.output)), "cal.bin")
    _check_request(req)
    _refuse_existing(_outputs(req), req.force)
    if req.engine_file:
        require_tensorrt()  # before any work: without TensorRT nothing is written
    cal_files = _calibration_files(req)

    model = load_model(req.model, req.key, compile=False)
    if req.spec is not None:  # the input size is the model's, as in evaluate (predict.spec_for_model)
        from kestrel_trainer.predict import model_input_hwc, spec_with_input_size

        req.spec = spec_with_input_size(req.spec, model_input_hwc(model), req.model)
    proto = onnx_model.keras_to_onnx(model, req.target_opset, req.static_batch_size)
    onnx_bytes = proto.SerializeToString()
    chw = onnx_model.input_chw(proto)
    n_classes = int(model.output_shape[-1])
    batch, source = _parity_batch(req, chw)
    check = parity.check(model, onnx_bytes, batch, source)
    log.info(check.line())
    if check.max_abs_diff > req.parity_tolerance:
        raise ExportError(f"{check.line()}: above --parity_tolerance {req.parity_tolerance:g}; nothing written")
    summary: dict = {"output": req.output, "parity": check, "written": []}
    files: dict[str, bytes] = {}

    model_bytes = onnx_bytes
    cache = None
    if req.data_type == "int8":
        if req.target == "tensorrt" and _reuse_cache(req):
            log.info("reusing the calibration cache %s", req.cal_cache_file)
            cache = calibration.read_cache(req.cal_cache_file)
        else:
            batches = _calibration_batches(req, cal_files, chw)
            if req.cal_image_dir and req.cal_data_file:
                summary["tensorfile_batches"] = batches
            if req.target == "tensorrt":
                cache = calibration.cache_text(calibration.entropy_ranges(onnx_bytes, batches)).encode()
                files[req.cal_cache_file] = cache
            else:
                from kestrel_trainer.export.quantize import quantize_qdq

                model_bytes = quantize_qdq(onnx_bytes, batches)
                summary["int8_parity"] = parity.check(model, model_bytes, batch, source)
                log.info("int8 (QDQ) %s", summary["int8_parity"].line())
    files[req.output] = onnx_model.encode(model_bytes, req.output, req.key)

    if req.gen_ds_config:
        folder = os.path.dirname(os.path.abspath(req.output))
        names = _class_names(req, n_classes)
        from kestrel_trainer.data.transforms import torch_mode

        mode = torch_mode(req.spec.train.preprocess_mode, req.spec.train.torch_std)
        norm = deepstream.normalisation(mode, chw[0], req.spec.train.image_mean)
        files[os.path.join(folder, deepstream.LABELS_FILE)] = deepstream.labels_text(names).encode()
        files[os.path.join(folder, deepstream.CONFIG_FILE)] = deepstream.config_text(
            model_file=_relative(req.output, folder), encrypted=req.output.lower().endswith(ETLT_SUFFIX), norm=norm,
            chw=chw, n_classes=n_classes, data_type=req.data_type,
            batch_size=req.static_batch_size or req.max_batch_size,
            cal_cache=_relative(req.cal_cache_file, folder) if req.cal_cache_file else None,
            engine_file=_relative(req.engine_file, folder) if req.engine_file else None).encode()

    if req.triton_repository:
        name = triton.model_name(req.output)
        where = triton.paths(req.triton_repository, name)
        files[where["model"]] = model_bytes  # plain ONNX (fp32, or the QDQ model for --target onnxruntime)
        files[where["labels"]] = triton.labels_text(_class_names(req, n_classes)).encode()
        files[where["config"]] = triton.config_text(
            name=name, input_name=onnx_model.INPUT_NAME, output_name=onnx_model.OUTPUT_NAME, chw=chw,
            n_classes=n_classes, max_batch_size=req.max_batch_size).encode()

    if req.engine_file:
        profile = optimization_profile(onnx_model.INPUT_NAME, chw, req.min_batch_size,
                                       opt_batch(req), req.max_batch_size,
                                       onnx_model.static_batch_of(proto))
        files[req.engine_file] = build_engine(onnx_bytes, profile, req.data_type, req.max_workspace_size, cache,
                                              strict=req.strict_type_constraints)

    if "tensorfile_batches" in summary:
        calibration.write_tensorfile(req.cal_data_file, summary.pop("tensorfile_batches"))
        summary["written"].append(req.cal_data_file)
    for path, data in files.items():
        write_atomic(path, data)
        summary["written"].append(path)
    return summary


@dataclass
class EngineRequest:
    model: str
    engine_file: str
    key: Optional[str] = None
    spec: object = None
    data_type: str = "fp32"
    cal_cache_file: Optional[str] = None
    cal_image_dir: Optional[str] = None
    cal_data_file: Optional[str] = None
    batches: int = calibration.DEFAULT_BATCHES
    batch_size: int = calibration.DEFAULT_BATCH_SIZE
    min_batch_size: int = 1
    opt_batch_size: Optional[int] = None
    max_batch_size: int = 1
    max_workspace_size: int = DEFAULT_WORKSPACE
    force: bool = False
    strict_type_constraints: bool = False


def prepare_engine(req: EngineRequest) -> tuple[bytes, object, Optional[bytes]]:
    """(ONNX bytes, optimization profile, calibration cache) for an engine: everything but TensorRT itself."""
    from kestrel_trainer.export import onnx_model
    from kestrel_trainer.export.tensorrt_engine import optimization_profile

    if req.data_type not in DATA_TYPES:
        raise ExportError(f"--data_type {req.data_type}: must be one of {', '.join(DATA_TYPES)}")
    check_strict_type_constraints(req.strict_type_constraints, req.data_type, True)
    _refuse_existing([req.engine_file], req.force)
    if os.path.splitext(req.model)[1].lower() in DEPLOY_SUFFIXES:
        onnx_bytes = onnx_model.read_onnx_bytes(req.model, req.key)
    else:
        from kestrel_trainer.model_io.files import load_model

        onnx_bytes = onnx_model.keras_to_onnx(load_model(req.model, req.key, compile=False)).SerializeToString()
    proto = onnx_model.parse_onnx(onnx_bytes, req.model)
    chw = onnx_model.input_chw(proto)
    profile = optimization_profile(proto.graph.input[0].name, chw, req.min_batch_size,
                                   opt_batch(req), req.max_batch_size,
                                   onnx_model.static_batch_of(proto))
    cache = None
    if req.data_type == "int8":
        if req.cal_cache_file and os.path.isfile(req.cal_cache_file):
            cache = calibration.read_cache(req.cal_cache_file)
        elif req.cal_image_dir and req.spec is not None:
            from kestrel_trainer.predict import spec_with_input_size

            spec = spec_with_input_size(req.spec, (chw[1], chw[2], chw[0]), req.model)
            files = calibration.calibration_files(req.cal_image_dir, req.batches * req.batch_size)
            batches = calibration.image_batches(files, spec, req.batch_size)
            cache = calibration.cache_text(calibration.entropy_ranges(onnx_bytes, batches)).encode()
        elif req.cal_data_file:
            batches = _check_batch_shapes(calibration.read_tensorfile(req.cal_data_file)[:req.batches], chw)
            cache = calibration.cache_text(calibration.entropy_ranges(onnx_bytes, batches)).encode()
        else:
            raise ExportError("--data_type int8 needs an existing --cal_cache_file, --cal_data_file FILE, or "
                              "--cal_image_dir with -e SPEC")
    return onnx_bytes, profile, cache


def run_gen_trt_engine(req: EngineRequest) -> str:
    from kestrel_trainer.export.tensorrt_engine import build_engine
    from kestrel_trainer.model_io.files import write_atomic

    onnx_bytes, profile, cache = prepare_engine(req)
    engine = build_engine(onnx_bytes, profile, req.data_type, req.max_workspace_size, cache,
                          strict=req.strict_type_constraints)
    write_atomic(req.engine_file, engine)
    return req.engine_file
