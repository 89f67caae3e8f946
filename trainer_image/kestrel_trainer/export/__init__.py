"""Deployment: ONNX / .etlt export, parity check, DeepStream config, INT8 calibration, TensorRT engines.

Modules (TensorFlow, onnx and onnxruntime are imported inside functions, never at import time):
- onnx_model: Keras -> ONNX (NCHW input `input_1`, softmax output `predictions`), .etlt pack/read.
- runtime: ONNX Runtime sessions and the classifier evaluate/inference run deployed models with.
- parity: the check every export runs (Keras vs ONNX Runtime on real preprocessed images).
- deepstream: labels.txt and nvinfer_config.txt numbers from the spec's preprocessing.
- calibration: calibration batches, the original's tensorfile, entropy ranges, TensorRT's cache format.
- quantize: statically quantized (QDQ) ONNX for ONNX Runtime on CPU.
- tensorrt_engine: the TensorRT builder (optimization profile, cache calibrator), imported lazily.
- run: the export and gen_trt_engine tasks that the CLI calls.
"""

# The closed sets of --data_type and --target (the CLI offers them as choices).
DATA_TYPES = ("fp32", "fp16", "int8")
TARGETS = ("tensorrt", "onnxruntime")
