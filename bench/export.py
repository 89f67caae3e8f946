"""Images/s and top-1 of an exported classifier: Keras vs ONNX Runtime fp32 vs ONNX Runtime int8 (QDQ).

Run by hand (not a test), with a trained model and its spec:
  .venv/bin/python bench/export.py -m RUN/weights/resnet_008.hdf5 -e examples/specs/fashion_mnist_resnet18.txt

Data: the spec's eval_dataset_path (Fashion-MNIST's test split: 10,000 real images), preprocessed once by
the spec (make_dataset, training=False) and held in memory, so only the model is timed. Calibration for
int8: the first --cal-images images of the spec's train_dataset_path (never the test split).
Baseline, in the same run: the Keras model called through tf.function (model(x, training=False)), the
fastest way TensorFlow runs it. ONNX Runtime variants, to find what makes it fast on this CPU:
  tf2onnx's graph as it comes (identity Reshapes between Conv and BN where maps are 1x1), basic graph
  optimisation (ORT_ENABLE_BASIC: constant folding, Conv+BN fusion), 1 intra-op thread; then with those
  Reshapes dropped (what export writes: every BN folds); + ORT_ENABLE_ALL (blocked NCHWc layout, Conv+Add+ReLU
  fusion); with one intra-op thread per core, with and without spin-waiting; an NHWC-input export (layout);
  Kestrel's runtime settings (export/runtime.py); the int8 QDQ model `export --data_type int8 --target
  onnxruntime` writes.
Throughput is the best of --rounds interleaved rounds (other processes share the machine: the best round
is the least disturbed one), each timing --seconds of back-to-back batches after a warm-up. Top-1 is over
the whole split. Prints a Markdown table with ratios against Keras at the same batch size.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer_image"))


def throughput(fn, x: np.ndarray, batch: int, seconds: float) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of fn over consecutive batches of x
    for about `seconds`, after two warm-up calls. The CPU-time rate does not depend on how much of the
    machine other processes take; the wall rate does."""
    n_batches = len(x) // batch
    fn(x[:batch])
    fn(x[batch:2 * batch])
    done, i, start, cpu = 0, 0, time.perf_counter(), time.process_time()
    while True:
        fn(x[i * batch:(i + 1) * batch])
        done += batch
        i = (i + 1) % n_batches
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed, done / max(time.process_time() - cpu, 1e-9)


def scores_of(fn, x: np.ndarray, batch: int = 250) -> np.ndarray:
    return np.concatenate([np.asarray(fn(x[i:i + batch])) for i in range(0, len(x), batch)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-e", "--spec", required=True)
    ap.add_argument("-k", "--key", default=os.environ.get("KESTREL_KEY"))
    ap.add_argument("--cal-images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N test images (quick runs)")
    args = ap.parse_args()

    import onnxruntime as ort
    import tensorflow as tf

    from kestrel_trainer.data import folders
    from kestrel_trainer.export import calibration, onnx_model
    from kestrel_trainer.export.quantize import quantize_qdq
    from kestrel_trainer.export.runtime import session
    from kestrel_trainer.model_io.files import load_model
    from kestrel_trainer.spec import load_spec

    spec = load_spec(args.spec, "export")
    data = folders.scan(spec.eval.eval_dataset_path)
    files, labels = data.files[:args.limit], np.asarray(data.labels[:args.limit])
    t = time.perf_counter()
    x = np.concatenate(calibration.preprocessed(files, spec, 500))
    print(f"{len(x)} test images of {data.root} preprocessed in {time.perf_counter() - t:.1f} s", flush=True)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    train = folders.scan(spec.train.train_dataset_path)
    step = max(len(train.files) // args.cal_images, 1)  # spread over all classes
    cal_files = train.files[::step][:args.cal_images]
    cal = calibration.image_batches(cal_files, spec, 32)

    model = load_model(args.model, args.key, compile=False)
    keras_fn = tf.function(lambda b: model(b, training=False))
    nchw = onnx_model.keras_to_onnx(model).SerializeToString()
    nhwc = onnx_model.keras_to_onnx(model, nchw=False).SerializeToString()
    raw = onnx_model.keras_to_onnx(model, clean=False).SerializeToString()
    t = time.perf_counter()
    qdq = quantize_qdq(nchw, cal)
    print(f"QDQ model from {len(cal_files)} calibration images in {time.perf_counter() - t:.1f} s", flush=True)
    for name, data in (("tf2onnx", raw), ("exported", nchw)):
        ops = collections.Counter(n.op_type for n in onnx_model.parse_onnx(data, name).graph.node)
        print(f"{name} ops:", dict(ops.most_common()))

    def ort_session(model_bytes: bytes, level, threads: int, spinning: bool = True):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])

    def runner(sess):
        name = sess.get_inputs()[0].name
        return lambda b: sess.run(None, {name: b})[0]

    cores = os.cpu_count() or 1
    G = ort.GraphOptimizationLevel
    variants = {
        "Keras (tf.function)": (lambda b: keras_fn(b).numpy(), x),
        "ORT fp32, tf2onnx graph as is, basic opt, 1 thread": (runner(ort_session(raw, G.ORT_ENABLE_BASIC, 1)),
                                                               x_nchw),
        "ORT fp32, identity reshapes dropped (BN fuses), basic opt, 1 thread": (
            runner(ort_session(nchw, G.ORT_ENABLE_BASIC, 1)), x_nchw),
        "ORT fp32, + all opt (NCHWc), 1 thread": (runner(ort_session(nchw, G.ORT_ENABLE_ALL, 1)), x_nchw),
        f"ORT fp32, + all opt, {cores} threads": (runner(ort_session(nchw, G.ORT_ENABLE_ALL, cores)), x_nchw),
        f"ORT fp32, + all opt, {cores} threads, no spinning": (
            runner(ort_session(nchw, G.ORT_ENABLE_ALL, cores, spinning=False)), x_nchw),
        "ORT fp32, NHWC input, all opt, 1 thread": (runner(ort_session(nhwc, G.ORT_ENABLE_ALL, 1)), x),
        "ORT fp32 (Kestrel runtime)": (runner(session(nchw)), x_nchw),
        "ORT int8 QDQ, all opt, 1 thread": (runner(ort_session(qdq, G.ORT_ENABLE_ALL, 1)), x_nchw),
        "ORT int8 QDQ (Kestrel runtime)": (runner(session(qdq)), x_nchw),
    }
    top1 = {}
    for name in ("Keras (tf.function)", "ORT fp32 (Kestrel runtime)", "ORT int8 QDQ (Kestrel runtime)"):
        fn, inputs = variants[name]
        top1[name] = float(np.mean(scores_of(fn, inputs).argmax(1) == labels))
    best: dict = collections.defaultdict(float)
    for r in range(args.rounds):
        for batch in (1, 32):
            for name, (fn, inputs) in variants.items():
                wall, cpu = throughput(fn, inputs, batch, args.seconds)
                best["wall", name, batch] = max(best["wall", name, batch], wall)
                best["cpu", name, batch] = max(best["cpu", name, batch], cpu)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    base = "Keras (tf.function)"
    print(f"\n{len(x)} images, {cores} cores, load average {os.getloadavg()[0]:.1f}, best of {args.rounds} rounds "
          f"of {args.seconds:g} s; img/s per wall second, and per CPU second of this process\n")
    print("| runtime | batch 1 img/s | vs Keras | per CPU-s | vs Keras | batch 32 img/s | vs Keras | per CPU-s "
          "| vs Keras | top-1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in variants:
        cells = []
        for batch in (1, 32):
            for kind in ("wall", "cpu"):
                value = best[kind, name, batch]
                cells += [f"{value:.0f}", f"{value / best[kind, base, batch]:.2f}x"]
        acc = f"{top1[name]:.4f}" if name in top1 else ""
        print(f"| {name} | {' | '.join(cells)} | {acc} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
