"""Statically quantized (QDQ) ONNX for ONNX Runtime on CPU, from the same calibration batches.

Weights are int8 per output channel, activations uint8 (the u8s8 pair x86 int8 kernels, VNNI included,
run fastest), ranges from min/max calibration (bench/export.py: 0.02 points of top-1 lost on the
Fashion-MNIST ResNet-18; entropy ranges were not compared). The fp32 model is first cleaned by ONNX
Runtime's quantization pre-processing (shape inference and graph optimisation: BN folded into
convolutions), so that each Conv is quantized once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np


def quantize_qdq(onnx_bytes: bytes, batches: Sequence[np.ndarray]) -> bytes:
    """The QDQ model (bytes) of an fp32 model, calibrated on NCHW `batches`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from kestrel_trainer.export.calibration import reader

    with tempfile.TemporaryDirectory(prefix="kestrel-qdq.") as tmp:
        plain, prepared, quantized = (os.path.join(tmp, n) for n in ("fp32.onnx", "prep.onnx", "int8.onnx"))
        with open(plain, "wb") as fh:
            fh.write(onnx_bytes)
        quant_pre_process(plain, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, quantized, reader(onnx_bytes, batches), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        with open(quantized, "rb") as fh:
            return fh.read()
