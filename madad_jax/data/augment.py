"""The reference's training augmentations, in numpy/scipy (no JAX: runs in data workers).

The reference applies, each independently with probability 0.5 and in this order: a
rotation by U(-5, 5) degrees; an integer translation of up to image_size/32 pixels on each
axis; brightness/contrast jitter (alpha = 1 + U(-0.1, 0.1), beta = U(-0.1, 0.1) of the
intensity range, clipped to the range). Geometric transforms move the brain mask with the
image (nearest neighbour, zero fill), and the image is re-masked afterwards. Here the
image is in [-1, 1]; the jitter is applied on its [0, 1] version, as the reference applies
it to the [0, 255] image before scaling.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    p: float = 0.5
    rotate_degrees: float = 5.0
    translate_px: int = -1  # -1: image_size // 32, as the reference
    brightness: float = 0.1
    contrast: float = 0.1


def _rotation(image: np.ndarray, mask: np.ndarray, degrees: float):
    h, w = image.shape
    theta = np.deg2rad(degrees)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - rot @ centre
    image = ndimage.affine_transform(image, rot, offset, order=1, mode="constant", cval=-1.0)
    mask = ndimage.affine_transform(mask, rot, offset, order=0, mode="constant", cval=0)
    return image, mask


def _shift(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def augment_slice(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, opts: AugmentOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one (H,W) image in [-1,1] (float32) and its (H,W) {0,1} brain mask."""
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask)
    # Draw every random number every time, so the stream does not depend on the outcomes.
    u = rng.random(3)
    degrees = rng.uniform(-opts.rotate_degrees, opts.rotate_degrees)
    limit = opts.translate_px if opts.translate_px >= 0 else image.shape[0] // 32
    dy, dx = (int(v) for v in rng.integers(-limit, limit + 1, size=2))
    alpha = 1.0 + rng.uniform(-opts.contrast, opts.contrast)
    beta = rng.uniform(-opts.brightness, opts.brightness)
    if u[0] < opts.p and opts.rotate_degrees > 0:
        image, mask = _rotation(image, mask, degrees)
    if u[1] < opts.p and (dy or dx):
        image, mask = _shift(image, dy, dx, -1.0), _shift(mask, dy, dx, 0)
    if u[2] < opts.p:
        unit = (image + np.float32(1.0)) * np.float32(0.5)
        unit = np.clip(unit * np.float32(alpha) + np.float32(beta), 0.0, 1.0)
        image = unit * np.float32(2.0) - np.float32(1.0)
    image = np.where(mask > 0, image, np.float32(-1.0)).astype(np.float32)
    return image, mask
