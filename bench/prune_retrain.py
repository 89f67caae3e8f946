"""Prune -> retrain on Fashion-MNIST: parameters removed vs test top-1, and inference images/s, in one run.

Everything goes through the real `kestrel` commands (train, prune, train from the pruned model, evaluate)
on examples/specs/fashion_mnist_resnet18.txt and fashion_mnist_resnet18_retrain.txt with the data paths
and epochs replaced. Throughput is measured in this process on the unpruned and the pruned models,
batch 32, interleaved so that a busy machine slows both alike. Finished steps found in --work (the base run,
pruned models, evaluations) are reused. Run by hand:

    .venv/bin/python bench/prune_retrain.py [--per-class N] [--epochs 8] [--retrain-epochs 4]
        [--thresholds 0.3 0.5 0.7] [--retrain auto|all|0.5,0.7] [--work DIR] [--wait-base]

Goals (issue 12, full data, 8 + retrain epochs): >= 50 % of the parameters removed with <= 1 point of test
top-1 lost after retraining, and the pruned model >= 1.5x the unpruned model's images/s at batch 32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "examples/specs/fashion_mnist_resnet18.txt"
RETRAIN_SPEC = REPO / "examples/specs/fashion_mnist_resnet18_retrain.txt"
KEY = "bench-prune-key"


def kestrel(*args: str) -> str:
    env = dict(os.environ, KESTREL_KEY=KEY)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kestrel_trainer.cli.main", *args], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.exit(f"kestrel {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  kestrel {args[0]} ... {time.perf_counter() - t:.0f} s", flush=True)
    return proc.stdout


def write_spec(template: Path, out: Path, data: Path, epochs: int, pretrained: str = "",
               learning_rate: float = 0.0) -> Path:
    text = template.read_text()
    if learning_rate:
        text = re.sub(r"learning_rate: [0-9.e-]+", f"learning_rate: {learning_rate}", text)
    text = text.replace('"data/fashion-mnist/', f'"{data}/')
    text = re.sub(r"n_epochs: \d+", f"n_epochs: {epochs}", text)
    if pretrained:
        text = re.sub(r'pretrained_model_path: "[^"]*"', f'pretrained_model_path: "{pretrained}"', text)
    out.write_text(text)
    return out


def top1(spec: Path, model: Path, out: Path) -> float:
    """Test top-1 of `model` (an earlier evaluation of the same file in `out` is reused)."""
    results = out / "results.json"
    if not (results.exists() and results.stat().st_mtime > model.stat().st_mtime):
        kestrel("evaluate", "-e", str(spec), "-m", str(model), "-r", str(out))
    return json.loads(results.read_text())["top_1_accuracy"]


def images_per_second(paths: dict[str, Path], batch: int, seconds: float) -> dict[str, float]:
    """Steady-state model(x) throughput at `batch`, rounds interleaved across the models."""
    import numpy as np
    import tensorflow as tf

    from kestrel_trainer.model_io.files import load_model

    models = {name: load_model(p, KEY, compile=False) for name, p in paths.items()}
    x = np.random.default_rng(0).random((batch, 32, 32, 1), dtype=np.float32)
    fns = {name: tf.function(lambda t, m=m: m(t, training=False)) for name, m in models.items()}
    for fn in fns.values():  # trace and warm up
        for _ in range(5):
            fn(x).numpy()
    spent = {name: 0.0 for name in fns}
    count = {name: 0 for name in fns}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(5):
                fn(x).numpy()
            spent[name] += time.perf_counter() - t
            count[name] += 5 * batch
    return {name: count[name] / spent[name] for name in fns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/kestrel-bench-prune")
    ap.add_argument("--data", default=None, help="Fashion-MNIST folders (default: import into WORK/data)")
    ap.add_argument("--per-class", type=int, default=None, help="import at most N images per class and split")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs of the unpruned model")
    ap.add_argument("--retrain-epochs", type=int, default=4)
    ap.add_argument("--retrain-lr", type=float, default=0.0, help="retrain learning rate (default: the retrain spec's)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--retrain", default="auto",
                    help="which pruned models to retrain: 'auto' (the lowest threshold removing >= 50 %% of the "
                    "parameters, the goal's), 'all', or thresholds separated by commas")
    ap.add_argument("--wait-base", action="store_true",
                    help="wait for a base training started elsewhere to write its final checkpoint")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0, help="throughput measuring time")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else work / "data"
    if not (data / "train").is_dir():
        extra = ["--per-class", str(args.per_class)] if args.per_class else []
        kestrel("dataset", "import", "fashion-mnist", "--out", str(data), *extra)
    t0 = time.perf_counter()
    spec = write_spec(SPEC, work / "train.txt", data, args.epochs)
    base = work / "base" / "weights" / f"resnet_{args.epochs:03d}.tlt"
    while args.wait_base and not base.exists():
        time.sleep(10)
    if not base.exists():
        kestrel("train", "-e", str(spec), "-r", str(work / "base"))
    base_top1 = top1(spec, base, work / "base" / "evaluate")
    rows, paths = [], {"unpruned": base}
    for pth in args.thresholds:
        pruned = work / f"pruned-{pth}" / "pruned.tlt"
        if not (pruned.exists() and pruned.stat().st_mtime > base.stat().st_mtime):  # pruning is deterministic
            kestrel("prune", "-m", str(base), "-o", str(pruned), "-pth", str(pth))
        report = json.loads((pruned.parent / "prune_report.json").read_text())
        rows.append({"threshold": pth, "params": report["parameters"]["after"],
                     "removed": report["parameters"]["removed"], "macs_ratio": report["macs"]["ratio"],
                     "top1_pruned": top1(spec, pruned, pruned.parent / "evaluate")})
        paths[f"pth {pth}"] = pruned
    if args.retrain == "auto":
        enough = [r["threshold"] for r in rows if r["removed"] >= 0.5]
        retrain = [min(enough)] if enough else [max(args.thresholds)]
    elif args.retrain == "all":
        retrain = list(args.thresholds)
    else:
        retrain = [float(t) for t in args.retrain.split(",") if t]
    for row in rows:
        pth = row["threshold"]
        if pth not in retrain:
            continue
        pruned = paths[f"pth {pth}"]
        tag = f"{pth}-e{args.retrain_epochs}" + (f"-lr{args.retrain_lr}" if args.retrain_lr else "")
        rspec = write_spec(RETRAIN_SPEC, work / f"retrain-{tag}.txt", data, args.retrain_epochs, str(pruned),
                           args.retrain_lr)
        run = work / f"retrain-{tag}"
        kestrel("train", "-e", str(rspec), "-r", str(run))
        final = run / "weights" / f"resnet_{args.retrain_epochs:03d}.tlt"
        row["top1_retrained"] = top1(rspec, final, run / "evaluate")
        paths[f"pth {pth}"] = final  # the retrained model is what gets deployed
    speed = images_per_second(paths, args.batch, args.seconds)
    base_params = report["parameters"]["before"]
    print(f"\nFashion-MNIST, resnet18 1x32x32, train {args.epochs} epochs, retrain {args.retrain_epochs} epochs, "
          f"data {data} (per class {args.per_class or 'all'}), {time.perf_counter() - t0:.0f} s")
    print(f"{'model':<12} {'params':>11} {'removed':>8} {'MACs':>6} {'top-1 pruned':>13} {'top-1 retrained':>16} "
          f"{'delta':>7} {'img/s b' + str(args.batch):>10} {'speedup':>8}")
    print(f"{'unpruned':<12} {base_params:>11,} {'':>8} {'':>6} {base_top1:>13.4f} {'':>16} {'':>7} "
          f"{speed['unpruned']:>10.0f} {1.0:>7.2f}x")
    for row in rows:
        name = f"pth {row['threshold']}"
        rt = row.get("top1_retrained")
        print(f"{name:<12} {row['params']:>11,} {row['removed']:>7.1%} {row['macs_ratio']:>6.2f} "
              f"{row['top1_pruned']:>13.4f} {(f'{rt:.4f}' if rt is not None else '-'):>16} "
              f"{(f'{(rt - base_top1) * 100:+.2f}' if rt is not None else '-'):>7} {speed[name]:>10.0f} "
              f"{speed[name] / speed['unpruned']:>7.2f}x")
    (work / "bench.json").write_text(json.dumps({"base_top1": base_top1, "base_params": base_params, "rows": rows,
                                                 "images_per_second": speed, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
