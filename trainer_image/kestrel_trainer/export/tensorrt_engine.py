"""TensorRT engines from an exported ONNX model (TensorRT's Python API, imported lazily).

TensorRT cannot be installed on our CPU machines (see docs/export.md): this module has never built an
engine here. Everything that does not need TensorRT itself (the optimization profile, the calibration
cache, the ONNX bytes) is computed and checked before `import tensorrt`, and is tested.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from kestrel_trainer.errors import KestrelError

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = 2 << 30  # bytes: 2 GiB, the original's default


class TensorRTMissing(KestrelError):
    exit_code = 2


@dataclass(frozen=True)
class Profile:
    """One optimization profile: the NCHW input shapes at the smallest, optimal and largest batch."""

    input_name: str
    min_shape: tuple[int, int, int, int]
    opt_shape: tuple[int, int, int, int]
    max_shape: tuple[int, int, int, int]


def optimization_profile(input_name: str, chw: tuple[int, int, int], min_batch: int, opt_batch: int,
                         max_batch: int, static_batch: Optional[int] = None) -> Profile:
    """The profile over [min, max] with opt in between; a static-batch model admits only its own batch."""
    from kestrel_trainer.export.onnx_model import ExportError

    if static_batch:
        min_batch = opt_batch = max_batch = static_batch
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ExportError(f"batch sizes must satisfy 1 <= --min_batch_size ({min_batch}) <= --opt_batch_size "
                          f"({opt_batch}) <= --max_batch_size ({max_batch})")
    return Profile(input_name, (min_batch, *chw), (opt_batch, *chw), (max_batch, *chw))


def require_tensorrt():
    """The tensorrt module, or a one-line error (exit 2) saying it is missing."""
    try:
        import tensorrt  # noqa: F401  (the package is absent on CPU machines)
    except ImportError as err:
        raise TensorRTMissing(f"TensorRT is not installed ({err}); engines need an NVIDIA GPU machine with the "
                              "tensorrt Python package: export the .onnx/.etlt here and build the engine there "
                              "(or let DeepStream build it)") from None
    return tensorrt


def precision_flags(trt, builder, data_type: str, strict: bool = False) -> list:
    """The BuilderFlags for `data_type`, as the original sets them: fp16 -> FP16; int8 -> INT8 plus FP16 where the
    GPU has fast FP16 (layers INT8 cannot run, or runs slower, fall back to FP16 rather than FP32), unless
    strict: then INT8 and precision constraints obeyed (TensorRT 8.2+'s OBEY_PRECISION_CONSTRAINTS, which replaces
    the STRICT_TYPES the original sets; STRICT_TYPES where that is all the TensorRT has); fp16 strict obeys the
    layers' precisions too, as STRICT_TYPES did in the original."""
    flags = []
    if data_type == "fp16":
        flags.append(trt.BuilderFlag.FP16)
    elif data_type == "int8":
        flags.append(trt.BuilderFlag.INT8)
        if not strict and getattr(builder, "platform_has_fast_fp16", True):
            flags.append(trt.BuilderFlag.FP16)
    if strict and data_type != "fp32":
        strict_flag = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)
        flags.append(strict_flag if strict_flag is not None else trt.BuilderFlag.STRICT_TYPES)
    return flags


def build_engine(onnx_bytes: bytes, profile: Profile, data_type: str, workspace: int = DEFAULT_WORKSPACE,
                 cal_cache: Optional[bytes] = None, strict: bool = False) -> bytes:
    """A serialized engine. int8 reads its scales from `cal_cache` (TensorRT's text format); `strict`
    (--strict_type_constraints) keeps int8 layers in int8 (precision_flags)."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise KestrelError(f"TensorRT cannot parse the ONNX model: {errors}", exit_code=2)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(profile.input_name, profile.min_shape, profile.opt_shape, profile.max_shape)
    config.add_optimization_profile(trt_profile)
    if data_type == "int8" and cal_cache is None:
        raise KestrelError("int8 engines need a calibration cache", exit_code=2)
    for flag in precision_flags(trt, builder, data_type, strict):
        config.set_flag(flag)
    if data_type == "int8":
        config.int8_calibrator = _cache_calibrator(trt, cal_cache, profile.opt_shape[0])
        config.set_calibration_profile(trt_profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise KestrelError("TensorRT failed to build the engine (see its log above)", exit_code=1)
    return bytes(engine)


def _cache_calibrator(trt, cache: bytes, batch_size: int):
    """An IInt8EntropyCalibrator2 that only reads the cache computed on the CPU (no batches to run)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names):  # noqa: ARG002 (the cache holds every scale)
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, cache_bytes) -> None:
            del cache_bytes

    return CacheCalibrator()
