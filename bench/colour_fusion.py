"""Per-image cost of colour augmentation at 3x224x224: folded into the resampling weights vs applied after it.

Run by hand (not a test):  .venv/bin/python bench/colour_fusion.py [--rounds 5] [--calls 100]

One 280x280 RGB source (the image cache's [W, C, H] layout), cropped and resized to 224x224 with caffe
preprocessing, timed per call (best of the rounds, the variants interleaved so that a busy machine slows all
of them alike):
- none: resampling + flip + caffe only (colour augmentation off);
- fused: the colour matrix in the column weights, one offset, one clip (what the pipeline does);
- after: resampling + flip, then the same colour matrix as its own pass (adjust_color), then caffe;
- hsv: resampling + flip, then TensorFlow's HSV round trip (the previous implementation), then caffe.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "trainer_image"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100, help="calls per variant and round")
    args = parser.parse_args()
    import tensorflow as tf

    from kestrel_trainer.data import transforms as T

    size, target = 280, 224
    src = tf.constant(np.random.default_rng(0).integers(0, 256, (size, 3, size)), tf.uint8)
    amounts = (tf.constant(12.0), tf.constant(0.1), tf.constant(-0.05))
    zero, flip = tf.constant(0), tf.constant(True)
    box = (tf.constant(250), tf.constant(250), tf.constant(10), tf.constant(12))

    def resample(mode, color=None):
        return T.resample_crop(src, zero, zero, size, size, *box, target, target, flip=flip, mode=mode,
                               transposed=True, color=color)

    def hsv(image):
        x = image / 255.0
        hsv = tf.image.rgb_to_hsv(x)
        hue = tf.math.floormod(hsv[..., 0] + amounts[0] / 360.0, 1.0)
        sat = tf.clip_by_value(hsv[..., 1] + amounts[1], 0.0, 1.0)
        x = tf.image.hsv_to_rgb(tf.stack([hue, sat, hsv[..., 2]], axis=-1))
        return tf.clip_by_value((x - 0.5) * (1.0 + amounts[2]) + 0.5, 0.0, 1.0) * 255.0

    variants = {
        "none": tf.function(lambda: resample("caffe")),
        "fused": tf.function(lambda: resample("caffe", amounts)),
        "after": tf.function(lambda: T.preprocess(T.adjust_color(resample(None), *amounts), "caffe")),
        "hsv": tf.function(lambda: T.preprocess(hsv(resample(None)), "caffe")),
    }
    np.testing.assert_allclose(variants["fused"]().numpy(), variants["after"]().numpy(), atol=1e-2)
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            fn()
            start = time.perf_counter()
            for _ in range(args.calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / args.calls)
    print(f"load average {os.getloadavg()[0]:.1f}; ms per image (best of {args.rounds} rounds of {args.calls}):")
    for name, seconds in best.items():
        extra = "" if name == "none" else f"  (colour costs {1e3 * (seconds - best['none']):+.3f} ms)"
        print(f"  {name:<6} {1e3 * seconds:7.3f}{extra}")


if __name__ == "__main__":
    main()
