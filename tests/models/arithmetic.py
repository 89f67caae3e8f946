"""Parameter counts by per-layer arithmetic, from the published layer tables, independent of our builders.

conv k x k, c_in -> c_out: k*k*c_in*c_out weights (+ c_out with a bias); batch norm over c channels: gamma
and beta (2c, trainable) plus the moving mean and variance (2c, not trainable); dense n_in -> n_out:
n_in*n_out + n_out. Sources: GoogLeNet = Szegedy et al. 2014, Table 1 (no auxiliary heads, no LRN, a BN after
every conv); AlexNet = Krizhevsky et al. 2012, one tower, max-pools after conv1, conv2 and conv5; DarkNet-19 =
YOLO9000 (Redmon & Farhadi 2016), Table 6; DarkNet-53 = YOLOv3 (2018), Table 1; CSPDarkNet-19/53 and
CSPDarkNet-tiny = the original tool's templates (NVIDIA TAO's open-source nvidia_tao_tf1/core/templates:
cspdarknet.py, cspdarknet_tiny.py). Our options: every conv honours use_bias and use_batch_norm; the default
head (retain_head false) is global average pool + Dense; the families' own heads are written out below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Count:
    use_bias: bool
    use_batch_norm: bool
    trainable: int = 0
    non_trainable: int = 0

    def conv(self, k: int, c_in: int, c_out: int) -> int:
        """A conv (+ BN): adds its parameters, returns its output channels."""
        self.trainable += k * k * c_in * c_out + (c_out if self.use_bias else 0)
        if self.use_batch_norm:
            self.trainable += 2 * c_out
            self.non_trainable += 2 * c_out
        return c_out

    def dense(self, n_in: int, n_out: int) -> int:
        self.trainable += n_in * n_out + n_out
        return n_out

    @property
    def total(self) -> int:
        return self.trainable + self.non_trainable


# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) of inception 3a, 3b, 4a-4e, 5a, 5b (the paper's Table 1)
INCEPTION = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), (192, 96, 208, 16, 48, 64),
             (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
             (256, 160, 320, 32, 128, 128), (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]


def googlenet(n: Count, c: int, classes: int, size: int, retain_head: bool) -> None:
    c = n.conv(7, c, 64)
    c = n.conv(1, c, 64)
    c = n.conv(3, c, 192)
    for one, r3, c3, r5, c5, proj in INCEPTION:
        n.conv(1, c, one)
        n.conv(3, n.conv(1, c, r3), c3)
        n.conv(5, n.conv(1, c, r5), c5)
        n.conv(1, c, proj)
        c = one + c3 + c5 + proj
    assert c == 1024  # the paper's output depth of 5b
    n.dense(c, classes)  # both heads: global pool (+ dropout) + dense


def alexnet(n: Count, c: int, classes: int, size: int, retain_head: bool) -> None:
    for k, filters in ((11, 96), (5, 256), (3, 384), (3, 384), (3, 256)):
        c = n.conv(k, c, filters)
    if not retain_head:
        n.dense(c, classes)
        return
    side = size
    for stride in (4, 2, 2):  # conv1 stride 4, then pool1 and pool2 ('same': ceil); the original has no pool5
        side = math.ceil(side / stride)
    n.dense(n.dense(n.dense(side * side * c, 4096), 4096), classes)  # fc6, fc7, predictions


DARKNET19 = [[(3, 64)], [(3, 128), (1, 64), (3, 128)], [(3, 256), (1, 128), (3, 256)],
             [(3, 512), (1, 256), (3, 512), (1, 256), (3, 512)],
             [(3, 1024), (1, 512), (3, 1024), (1, 512), (3, 1024)]]
DARKNET53 = [(64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)]  # (stage width, residual blocks)


def _head(n: Count, c: int, classes: int, retain_head: bool) -> None:
    # retain_head: YOLO9000's 1x1 conv to the classes (with a bias, no BN) + global pool; else pool + dense:
    # the same count
    n.dense(c, classes)


def darknet19(n: Count, c: int, classes: int, size: int, retain_head: bool) -> None:
    c = n.conv(3, c, 32)
    for stage in DARKNET19:
        for k, filters in stage:
            c = n.conv(k, c, filters)
    _head(n, c, classes, retain_head)


def darknet53(n: Count, c: int, classes: int, size: int, retain_head: bool) -> None:
    c = n.conv(3, c, 32)
    for width, blocks in DARKNET53:
        c = n.conv(3, c, width)  # stride 2
        for _ in range(blocks):
            n.conv(3, n.conv(1, c, width // 2), width)
    _head(n, c, classes, retain_head)


def cspdarknet53(n: Count, c: int, classes: int, size: int, retain_head: bool) -> None:
    """Stage of width w: 3x3/2 conv to w; two 1x1 convs to h (the skipped part and the processed part, h = w
    in stage 1, w/2 after); residual blocks [1x1, 3x3] at h (stage 1: a 32-wide bottleneck); a 1x1 transition
    at h; concatenation (2h); a 1x1 to w."""
    c = n.conv(3, c, 32)
    for stage, (width, blocks) in enumerate(DARKNET53):
        c = n.conv(3, c, width)
        half = width if stage == 0 else width // 2
        n.conv(1, c, half)
        n.conv(1, c, half)
        for _ in range(blocks):
            n.conv(3, n.conv(1, half, 32 if stage == 0 else half), half)
        n.conv(1, half, half)
        c = n.conv(1, 2 * half, width)
    _head(n, c, classes, retain_head)


def cspdarknet19(n: Count, c: int, classes: int, size: int, retain_head: bool) -> None:
    """Stage 1 as DarkNet-19; stage k >= 2 of width w: a 3x3 conv to w, two 1x1 convs to w/2, DarkNet-19's
    remaining [1x1, 3x3] pairs at w/2, a 1x1 transition at w/2, concatenation (w), a 1x1 to w."""
    c = n.conv(3, c, 32)
    c = n.conv(3, c, 64)
    for stage in DARKNET19[1:]:
        width = stage[0][1]
        c = n.conv(3, c, width)
        half = width // 2
        n.conv(1, c, half)
        x = n.conv(1, c, half)
        for _ in range((len(stage) - 1) // 2):
            x = n.conv(3, n.conv(1, x, half), half)
        n.conv(1, half, half)
        c = n.conv(1, 2 * half, width)
    _head(n, c, classes, retain_head)


def cspdarknet_tiny(n: Count, c: int, classes: int, size: int, retain_head: bool) -> None:
    """YOLOv4-tiny's backbone: two 3x3/2 convs (32, 64), three CSP blocks of width w (64, 128, 256): a 3x3 conv
    to w, its second half through two 3x3 convs at w/2, their concatenation (w) through a 1x1 to w, concatenated
    with the block's first conv (2w); a 3x3 conv to 512."""
    c = n.conv(3, c, 32)
    c = n.conv(3, c, 64)
    for width in (64, 128, 256):
        n.conv(3, c, width)
        n.conv(3, n.conv(3, width // 2, width // 2), width // 2)
        n.conv(1, width, width)
        c = 2 * width
    c = n.conv(3, c, 512)
    _head(n, c, classes, retain_head)


FAMILIES = {
    ("googlenet", None): googlenet,
    ("alexnet", None): alexnet,
    ("darknet", 19): darknet19,
    ("darknet", 53): darknet53,
    ("cspdarknet", 19): cspdarknet19,
    ("cspdarknet", 53): cspdarknet53,
    ("cspdarknet_tiny", None): cspdarknet_tiny,
}


def expected_count(arch: str, n_layers, *, channels: int, size: int, classes: int, retain_head: bool,
                   use_bias: bool, use_batch_norm: bool) -> Count:
    count = Count(use_bias=use_bias, use_batch_norm=use_batch_norm)
    FAMILIES[(arch, n_layers)](count, channels, classes, size, retain_head)
    return count
