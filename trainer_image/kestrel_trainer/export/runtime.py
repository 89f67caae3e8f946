"""ONNX Runtime sessions, and the classifier that evaluate / inference use for .onnx and .etlt files.

Session settings follow bench/export.py (docs/export.md): every graph optimisation (ORT_ENABLE_ALL:
Conv+BN+Add+ReLU fusion and the blocked NCHWc layout, which more than doubled throughput), one intra-op
thread per CPU this process may use, and no spin-waiting between ops: on a shared node (or a pod with a
CPU limit) spinning threads burn the CPU the other thread needs, which cut throughput by 3x or more there.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np


def session(onnx_bytes: bytes, threads: Optional[int] = None, optimize: bool = True):
    """An onnxruntime.InferenceSession on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0)) or 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def run_nchw(sess, batch_nhwc: np.ndarray) -> np.ndarray:
    """Scores of a channels-last batch (what make_dataset yields) on a session with NCHW input."""
    x = np.ascontiguousarray(np.transpose(np.asarray(batch_nhwc, np.float32), (0, 3, 1, 2)))
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class OnnxClassifier:
    """An exported model with the part of the Keras interface predict.py uses: output_shape, predict.

    predict takes the same preprocessed channels-last batches as the Keras model (a tf.data dataset of
    image batches, or an array) and feeds them NCHW, so evaluate and inference check the artifact that
    is deployed with exactly the spec's preprocessing.
    """

    def __init__(self, onnx_bytes: bytes, path: str, threads: Optional[int] = None) -> None:
        from kestrel_trainer.export.onnx_model import input_chw, parse_onnx, static_batch_of

        proto = parse_onnx(onnx_bytes, path)
        self.path = path
        self.input_chw = input_chw(proto)
        self.static_batch = static_batch_of(proto)
        out_dims = proto.graph.output[0].type.tensor_type.shape.dim
        self.output_shape = (None, int(out_dims[-1].dim_value))
        self.session = session(onnx_bytes, threads)

    def predict_batch(self, batch_nhwc: np.ndarray) -> np.ndarray:
        n = len(batch_nhwc)
        if self.static_batch and n != self.static_batch:
            padded = np.zeros((self.static_batch, *batch_nhwc.shape[1:]), np.float32)
            out = []
            for start in range(0, n, self.static_batch):
                part = batch_nhwc[start:start + self.static_batch]
                padded[:len(part)] = part
                out.append(run_nchw(self.session, padded)[:len(part)])
            return np.concatenate(out)
        return run_nchw(self.session, batch_nhwc)

    def predict(self, batches, verbose: int = 0) -> np.ndarray:
        del verbose
        if isinstance(batches, np.ndarray):
            batches = [batches]
        out = [self.predict_batch(np.asarray(b)) for b in batches]
        return np.concatenate(out) if out else np.zeros((0, self.output_shape[1]), np.float32)


def load_classifier(path: str, key: Optional[str]) -> OnnxClassifier:
    from kestrel_trainer.export.onnx_model import read_onnx_bytes

    return OnnxClassifier(read_onnx_bytes(path, key), path)
