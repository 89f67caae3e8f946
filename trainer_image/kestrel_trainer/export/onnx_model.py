"""Keras -> ONNX for TensorRT / DeepStream, and reading the ONNX bytes back from .onnx or .etlt.

The exported graph takes NCHW input named `input_1` (what DeepStream's infer-dims=C;H;W feeds), has a
dynamic batch dimension named `batch` unless a static batch is asked for, and one output: the softmax
`predictions`. tf2onnx converts the channels-last Keras model and puts the NCHW->NHWC transpose in the
graph (`inputs_as_nchw`); ONNX Runtime and TensorRT fold it into the first convolution.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from kestrel_trainer.errors import KestrelError, ModelFileError

log = logging.getLogger(__name__)

INPUT_NAME = "input_1"
OUTPUT_NAME = "predictions"
BATCH_DIM = "batch"
MIN_OPSET = 12
MAX_OPSET = 18  # the newest opset tf2onnx 1.17 writes
DEFAULT_OPSET = 17
ONNX_SUFFIX = ".onnx"
ETLT_SUFFIX = ".etlt"
DEPLOY_SUFFIXES = (ONNX_SUFFIX, ETLT_SUFFIX)


class ExportError(KestrelError):
    """An export that cannot be done as asked (bad flag combination, failed parity): exit 2."""

    exit_code = 2


def check_opset(opset: int) -> int:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--target_opset {opset}: supported opsets are {MIN_OPSET}..{MAX_OPSET}")
    return opset


def is_deployed(path: str) -> bool:
    """True for the files export writes (.onnx, .etlt), which run with ONNX Runtime instead of Keras."""
    return os.path.splitext(path)[1].lower() in DEPLOY_SUFFIXES


def keras_to_onnx(model, opset: int = DEFAULT_OPSET, static_batch: Optional[int] = None, nchw: bool = True,
                  clean: bool = True):
    """The onnx.ModelProto of a channels-last Keras classifier, with NCHW input; checker-clean.
    nchw=False (NHWC input) and clean=False (tf2onnx's graph as it comes) exist for bench/export.py."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    check_opset(opset)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(f"{model.name}: export handles one input and one output, not "
                          f"{len(model.inputs)} and {len(model.outputs)}")
    h, w, c = (int(d) for d in model.inputs[0].shape[1:])
    batch = static_batch if static_batch else None
    signature = (tf.TensorSpec((batch, h, w, c), tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset,
                                          inputs_as_nchw=[INPUT_NAME] if nchw else None)
    _rename_output(proto, OUTPUT_NAME)
    if clean:
        drop_identity_reshapes(proto)
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        if static_batch:
            dim.dim_value = static_batch
        else:
            dim.dim_param = BATCH_DIM
    proto.producer_name = "kestrel"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def drop_identity_reshapes(proto) -> int:
    """Remove Reshape nodes that keep their input's shape; returns how many.

    Where a feature map is 1x1, NHWC and NCHW hold the same bytes, and tf2onnx writes the layout changes
    there as Reshape [-1, C, 1, 1] of a [N, C, 1, 1] tensor. They do nothing, but sit between Conv and
    BatchNormalization, so ONNX Runtime (and TensorRT) can no longer fold the BN into the Conv, and they
    break ONNX Runtime's blocked NCHWc layout. bench/export.py measures the effect.
    """
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for value in (*inferred.graph.value_info, *inferred.graph.input):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    dropped = []
    for node in proto.graph.node:
        if node.op_type != "Reshape" or node.output[0] in outputs or node.input[1] not in constants:
            continue
        source, target = shapes.get(node.input[0]), [int(v) for v in constants[node.input[1]].ravel()]
        if (source and len(source) == len(target) and target[0] == -1 and None not in source[1:]
                and source[1:] == target[1:]):
            dropped.append(node)
    for node in dropped:
        old, new = node.output[0], node.input[0]
        proto.graph.node.remove(node)
        for other in proto.graph.node:
            other.input[:] = [new if i == old else i for i in other.input]
    used = {i for n in proto.graph.node for i in n.input}
    for unused in [t for t in proto.graph.initializer if t.name not in used]:  # the dropped shape constants
        proto.graph.initializer.remove(unused)
    return len(dropped)


def _rename_output(proto, name: str) -> None:
    old = proto.graph.output[0].name
    if old == name:
        return
    for node in proto.graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    proto.graph.output[0].name = name


def parse_onnx(data: bytes, path: str):
    """onnx.ModelProto of `data`, or ModelFileError naming `path` (garbage, truncated, wrong .etlt key)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as err:
        log.debug("cannot parse %s: %r", path, err)
        proto = None
    # Random bytes sometimes parse as a protobuf; a real model has an IR version, an opset and nodes.
    if proto is None or proto.ir_version <= 0 or not proto.opset_import or not proto.graph.node:
        if path.lower().endswith(ETLT_SUFFIX):
            raise ModelFileError(f"wrong key or corrupt file: {path} (the decrypted bytes are not an ONNX model)")
        raise ModelFileError(f"corrupt file: {path} is not an ONNX model")
    return proto


def read_onnx_bytes(path: str, key: Optional[str]) -> bytes:
    """The ONNX bytes of an .onnx file or of an .etlt decrypted with `key` (checked to parse)."""
    from kestrel_trainer.model_io import tao_crypto

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelFileError(f"model file is a directory: {path}") from None
    if path.lower().endswith(ETLT_SUFFIX):
        if not key:
            raise ModelFileError(f"{path} is encrypted: give the key with -k or KESTREL_KEY")
        try:
            name, data = tao_crypto.unpack_etlt(data, key)
        except ValueError as err:
            raise ModelFileError(f"corrupt file: {path} ({err})") from None
        # The original writes an input-node name only for UFF (0 for ONNX): known before the key is checked.
        if name or looks_like_uff(data):
            where = f" (input node {name!r})" if name else ""
            raise ModelFileError(f"{path}: the original's UFF .etlt{where}; UFF models are not supported; re-export "
                                 "with `kestrel export -m MODEL.tlt -o MODEL.etlt` from the trained .tlt (ONNX, "
                                 "which DeepStream and TensorRT read)")
    parse_onnx(data, path)
    return data


# uff.MetaGraph's fields: version=1, descriptor_core_version=2 (varints), descriptors=3, graphs=4,
# referenced_data=5 (length-delimited): the wire type each field must have.
_UFF_FIELDS = {1: 0, 2: 0, 3: 2, 4: 2, 5: 2}


def looks_like_uff(data: bytes) -> bool:
    """True when `data` parses, to its end, as a uff.MetaGraph protobuf with a version and a graph."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while pos < len(data) and shift < 64:
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos += 1
            if not byte & 0x80:
                return value, pos
            shift += 7
        raise ValueError("truncated varint")

    seen, pos = set(), 0
    try:
        while pos < len(data):
            tag, pos = varint(pos)
            number, wire = tag >> 3, tag & 7
            if _UFF_FIELDS.get(number) != wire:
                return False
            value, pos = varint(pos)
            if wire == 2:
                pos += value
                if pos > len(data):
                    return False
            seen.add(number)
    except ValueError:
        return False
    return {1, 4} <= seen


def encode(onnx_bytes: bytes, path: str, key: Optional[str]) -> bytes:
    """The file content for `path`: the ONNX bytes for .onnx, the original's .etlt layout for .etlt."""
    from kestrel_trainer.model_io import tao_crypto

    if path.lower().endswith(ETLT_SUFFIX):
        if not key:
            raise ExportError(f"{path}: an .etlt is encrypted: give the key with -k or KESTREL_KEY")
        return tao_crypto.pack_etlt(onnx_bytes, key)
    return onnx_bytes


def input_chw(proto) -> tuple[int, int, int]:
    """(C, H, W) of the model's NCHW input."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims[1:4])  # type: ignore[return-value]


def static_batch_of(proto) -> Optional[int]:
    """The fixed batch size of the input, or None when it is dynamic."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None
