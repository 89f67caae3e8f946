"""Decode less: the JPEG DCT scale (1/1, 1/2, 1/4, 1/8) at which each image is decoded. Pure: no TensorFlow.

libjpeg can decode a JPEG at 1/r of its size (r in 1, 2, 4, 8; output ceil(size / r) per side) for a
fraction of the cost of a full decode, and a 4000x3000 photo cropped to 224x224 never needs all its pixels: the
pipeline resamples the crop's region down to the output anyway.

The rule (this module, JpegScale): for a spec's geometry (random crop at its smallest fraction, center crop or
plain resize, at the model's input size), take the most magnified region the pipeline can ever sample from an
H x W image; decode at the largest r for which that region, decoded at 1/r, still has at least as many pixels
on each side as the output. The resampler then still only shrinks (never enlarges) compared to a full decode.
Geometry stays in the full image's coordinates: the crop box is computed on the header's size and read from
the reduced image at 1/r (transforms.axis_taps' `ratio`), so the same draws cut the same part of the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import numpy as np

RATIOS = (1, 2, 4, 8)  # the scales libjpeg's DCT scaling offers (TensorFlow's decode_jpeg `ratio`)


@dataclass(frozen=True)
class JpegScale:
    """need_h, need_w: the image height and width at which the most magnified region the pipeline can sample
    holds exactly as many pixels as the output (rationals: exact comparisons).

    Ratio r is allowed for an H x W image when r * need_h <= H and r * need_w <= W (exact rationals).
    """

    need_h: Fraction
    need_w: Fraction

    @classmethod
    def for_geometry(cls, target_h: int, target_w: int, *, random_crop_min_fraction: Optional[float] = None,
                     center_crop_padding: Optional[int] = None) -> JpegScale:
        """The rule for one pipeline geometry (give at most one of the two keywords; neither: plain resize).

        - random crop: the image is resized by s = max(W_t / (f W), H_t / (f H)) and a target-size window is
          cut, so the region spans W_t / s <= f W source columns (and H_t / s <= f H rows), the smallest at the
          smallest f. Decoded at 1/r it keeps >= W_t columns when r * s <= 1: r * W_t / f <= W and
          r * H_t / f <= H.
        - center crop: s = max((W_t + p) / W, (H_t + p) / H): r * (W_t + p) <= W and r * (H_t + p) <= H.
        - plain resize (the whole image to the target, aspect not kept): r * W_t <= W and r * H_t <= H.
        """
        if random_crop_min_fraction is not None and center_crop_padding is not None:
            raise ValueError("random crop and center crop exclude each other")
        if random_crop_min_fraction is not None:
            f = Fraction(str(random_crop_min_fraction))
            if not 0 < f <= 1:
                raise ValueError(f"random crop fraction must be in (0, 1], got {random_crop_min_fraction}")
            return cls(target_h / f, target_w / f)
        if center_crop_padding is not None:
            return cls(Fraction(target_h + center_crop_padding), Fraction(target_w + center_crop_padding))
        return cls(Fraction(target_h), Fraction(target_w))

    def thresholds(self) -> tuple[tuple[int, int, int], ...]:
        """(r, min_height, min_width) for each r > 1: r is allowed exactly when H >= min_height and W >= min_width
        (the integer form of the rule, which the TensorFlow side applies to the header's size)."""
        return tuple((r, math.ceil(r * self.need_h), math.ceil(r * self.need_w)) for r in RATIOS[1:])

    def ratio(self, height: int, width: int) -> int:
        """The largest allowed r for an H x W JPEG (1 when none is)."""
        return int(self.ratios(np.array([height]), np.array([width]))[0])

    def ratios(self, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """ratio() of many JPEGs at once (int32)."""
        out = np.ones(np.shape(heights), np.int32)
        for r, min_h, min_w in self.thresholds():  # ascending: a larger allowed r overrides
            out[(np.asarray(heights) >= min_h) & (np.asarray(widths) >= min_w)] = r
        return out


def scaled_size(size: int, ratio: int) -> int:
    """libjpeg's output size at 1/ratio: ceil(size / ratio) (the last pixel covers a partial block)."""
    return -(-size // ratio)
