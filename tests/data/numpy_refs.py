"""Independent NumPy references: the original's formulas and PIL-style separable resampling."""

from __future__ import annotations

import colorsys

import numpy as np


def _kernel(method, u):
    u = np.abs(u)
    if method == "bilinear":
        return np.maximum(0.0, 1.0 - u)
    a = -0.5  # Keys cubic, as PIL's BICUBIC
    return np.where(u <= 1, (a + 2) * u**3 - (a + 3) * u**2 + 1,
                    np.where(u < 2, a * u**3 - 5 * a * u**2 + 8 * a * u - 4 * a, 0.0))


def _weights(n_in, n_resized, offset, n_out, method, ratio=1, n_full=None):
    """Row i: weights of input pixels for output pixel i of the resized image's window at `offset`.
    ratio > 1: the n_in input pixels are an n_full image decoded at 1/ratio (pixel j centred on full-size
    position (j + 0.5) * ratio), and n_resized is the full image's resized size."""
    scale = n_resized / n_in if ratio == 1 else n_resized * ratio / n_full
    support = max(1.0 / scale, 1.0)  # antialias when shrinking, as PIL
    centres = (np.arange(n_out) + offset + 0.5) / scale
    w = _kernel(method, (np.arange(n_in)[None, :] + 0.5 - centres[:, None]) / support)
    return w / w.sum(axis=1, keepdims=True)


def ref_resize_crop(img, rh, rw, top, left, th, tw, method, ratio=1, full=None):
    """full: (H, W) of the full image when `img` is it decoded at 1/ratio."""
    full = full or img.shape[:2]
    wy = _weights(img.shape[0], rh, top, th, method, ratio, full[0])
    wx = _weights(img.shape[1], rw, left, tw, method, ratio, full[1])
    out = np.einsum("ih,hwc,jw->ijc", wy, img.astype(np.float64), wx)
    return np.clip(out, 0, 255)


def ref_random_box(h, w, th, tw, fraction, u_top, u_left):
    """classification_tf1's random crop with random.uniform/randint replaced by given draws."""
    ratio = max((tw / fraction) / w, (th / fraction) / h)
    rw, rh = int(w * ratio), int(h * ratio)
    return rh, rw, int(u_top * (rh - th + 1)), int(u_left * (rw - tw + 1))


def ref_center_box(h, w, th, tw):
    ratio = max((tw + 32) / w, (th + 32) / h)
    rw, rh = int(w * ratio), int(h * ratio)
    return rh, rw, int(round(rh / 2)) - int(round(th / 2)), int(round(rw / 2)) - int(round(tw / 2))


def ref_preprocess(x, mode, mean=None):
    x = x.astype(np.float64)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch_per_channel":  # train_config.torch_std "per_channel": ImageNet's std per channel
        return (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    if mode == "torch":  # the original: 0.224 for every channel
        if x.shape[-1] == 3:
            return (x / 255.0 - np.array([0.485, 0.456, 0.406])) / 0.224
        return (x / 255.0 - 0.449) / 0.224
    if x.shape[-1] == 3:
        m = [mean["b"], mean["g"], mean["r"]] if mean else [103.939, 116.779, 123.68]
        return x[..., ::-1] - np.array(m)
    return x - (mean["l"] if mean else 117.3786)


def ref_color_hsv(img, hue_deg, sat, contrast):
    """The original's colour augmentation (classification_tf1 utils/helper.py color_augmentation: an additive
    shift with stddev 0, i.e. none; HSV hue rotation; HSV saturation shift clipped to [0, 1]; contrast about
    0.5, clipped), with colorsys's HSV on RGB. (The original hands RGB to OpenCV as BGR: its hue turns the other
    way, which its symmetric U(-25, 25) draw does not see, and a saturation increase tints greys towards channel 2
    where colorsys tints them towards channel 0.)"""
    x = img / 255.0
    out = np.empty_like(x)
    for i in np.ndindex(x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*x[i])
        out[i] = colorsys.hsv_to_rgb((h + hue_deg / 360.0) % 1.0, min(max(s + sat, 0.0), 1.0), v)
    return np.clip((out - 0.5) * (1 + contrast) + 0.5, 0, 1) * 255.0


def ref_color_matrix(img, hue_deg, sat, contrast):
    """Kestrel's colour augmentation from its documented formula (docs/data.md), pixel by pixel: Rodrigues'
    rotation of the RGB vector about the grey axis k = (1, 1, 1)/sqrt(3) by hue_deg, the part off the axis
    scaled by (1 + sat), clipped to [0, 1], contrast about 0.5, clipped again."""
    k = np.ones(3) / np.sqrt(3.0)
    t = np.deg2rad(hue_deg)
    x = img.astype(np.float64) / 255.0
    out = np.empty_like(x)
    for i in np.ndindex(x.shape[:-1]):
        v = x[i]
        on_axis = k * np.dot(k, v)
        rotated = v * np.cos(t) + np.cross(k, v) * np.sin(t) + on_axis * (1.0 - np.cos(t))
        out[i] = np.clip(on_axis + (1.0 + sat) * (rotated - on_axis), 0.0, 1.0)
    return np.clip((out - 0.5) * (1 + contrast) + 0.5, 0, 1) * 255.0
