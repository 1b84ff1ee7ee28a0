"""Training augmentations, in numpy only (no JAX: runs in data workers).

Each transform fires independently with probability `p`, in this order: a rotation, a
translation, then brightness/contrast jitter; the image is re-masked by the (moved) brain
mask afterwards. Two modes:

- "reference": what the authors' albumentations pipeline actually does. `Affine(rotate=5)`
  turns the scalar into the range (5, 5), so the rotation is exactly +5 degrees, and
  `Affine(translate_px=image_size // 32)` shifts by exactly +image_size/32 px in x and in y.
  Both warp the uint8 slice with bilinear interpolation (the mask: nearest) and a constant 0
  border, about the pixel-grid centre. The jitter is `RandomBrightnessContrast(0.1, 0.1)` on
  the uint8 slice: a lookup table `clip(v * alpha + beta * 255, 0, 255)` truncated to uint8,
  with alpha = 1 + U(-0.1, 0.1) and beta = U(-0.1, 0.1). The [-1, 1] image is quantized to
  uint8 for these transforms when one of them fires.
- "symmetric" (this project's earlier reading): a rotation by U(-r, r) degrees, integer
  shifts in [-t, t] on each axis, and the jitter on the [0, 1] float image.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

AUGMENT_MODES = ("symmetric", "reference")


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    p: float = 0.5
    rotate_degrees: float = 5.0
    translate_px: int = -1  # -1: image_size // 32, as the reference
    brightness: float = 0.1
    contrast: float = 0.1
    mode: str = "symmetric"  # symmetric | reference

    def __post_init__(self):
        if self.mode not in AUGMENT_MODES:
            raise ValueError(f"augment mode must be one of {AUGMENT_MODES}, not {self.mode!r}")


# ---------------------------------------------------------------------------- reference mode


def affine_matrix(shape: tuple[int, int], degrees: float = 0.0,
                  shift_xy: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """2x3 forward map (x, y) -> (x', y') of albumentations' Affine: rotate about the centre.

    x is the column and y the row (pointing down); a positive angle turns the image
    counter-clockwise on screen. The centre is ((W-1)/2, (H-1)/2).
    """
    h, w = shape
    theta = np.deg2rad(degrees)
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    offset = centre - rot @ centre + np.asarray(shift_xy, np.float64)
    return np.concatenate([rot, offset[:, None]], axis=1)


AB_BITS = 10  # opencv's warpAffine: coordinates in 1/1024 px
INTER_BITS = 5  # bilinear weights in 1/32 px steps


def _inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse 2x3 map, as opencv's invertAffineTransform computes it."""
    (a, b, c), (d, e, f) = np.asarray(matrix, np.float64)
    det = a * e - b * d
    det = 1.0 / det if det != 0 else 0.0
    i00, i01, i10, i11 = e * det, -b * det, -d * det, a * det
    return np.array([[i00, i01, -i00 * c - i01 * f], [i10, i11, -i10 * c - i11 * f]])


def _fixed_coords(shape: tuple[int, int], matrix: np.ndarray, round_delta: int):
    """Source (x, y) of every output pixel in 1/1024 px, as opencv's warpAffine rounds them."""
    h, w = shape
    inv = _inverse(matrix)
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    scale = float(1 << AB_BITS)
    # opencv rounds the column and row parts separately, then adds them.
    fx, fy = (np.rint(inv[i, 0] * xs * scale)[None, :]
              + np.rint((inv[i, 1] * ys + inv[i, 2]) * scale)[:, None] for i in (0, 1))
    return fx.astype(np.int64) + round_delta, fy.astype(np.int64) + round_delta


def _gather(a: np.ndarray, yi: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """a[yi, xi], 0 outside the image."""
    h, w = a.shape
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    return np.where(inside, a[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0)


def warp_bilinear_u8(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Bilinear warp of a uint8 (H,W) image by the forward map `matrix`, constant 0 border.

    Follows opencv's fixed-point arithmetic (coordinates in 1/32 px, integer weights, round
    half up), so the result is the same uint8 image.
    """
    steps = 1 << INTER_BITS
    fx, fy = _fixed_coords(image.shape, matrix, (1 << AB_BITS) // steps // 2)
    qx, qy = fx >> (AB_BITS - INTER_BITS), fy >> (AB_BITS - INTER_BITS)
    x0, y0, ax, ay = qx >> INTER_BITS, qy >> INTER_BITS, qx & (steps - 1), qy & (steps - 1)
    a = image.astype(np.int64)
    acc = ((steps - ay) * ((steps - ax) * _gather(a, y0, x0) + ax * _gather(a, y0, x0 + 1))
           + ay * ((steps - ax) * _gather(a, y0 + 1, x0) + ax * _gather(a, y0 + 1, x0 + 1)))
    half = steps * steps // 2
    return np.clip((acc + half) // (steps * steps), 0, 255).astype(np.uint8)


def warp_nearest(mask: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Nearest-neighbour warp by the forward map `matrix` (opencv's rounding), 0 border."""
    fx, fy = _fixed_coords(mask.shape, matrix, (1 << AB_BITS) // 2)
    return _gather(mask, fy >> AB_BITS, fx >> AB_BITS).astype(mask.dtype)


def brightness_contrast_u8(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """`v * alpha + beta * 255` through a float32 lookup table, clipped and truncated."""
    lut = np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta * 255.0)
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    return lut[image]


def to_u8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] float image as the uint8 slice it came from."""
    return np.clip(np.rint((image.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_u8(image: np.ndarray) -> np.ndarray:
    """uint8 slice in [-1, 1], as `data.png` maps it."""
    return (image.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)


def _augment_reference(image, mask, rng, opts):
    u = rng.random(3)
    alpha = 1.0 + rng.uniform(-opts.contrast, opts.contrast)
    beta = rng.uniform(-opts.brightness, opts.brightness)
    fire = u < opts.p
    if not fire.any():
        return image, mask
    img = to_u8(image)
    shift = opts.translate_px if opts.translate_px >= 0 else image.shape[0] // 32
    if fire[0] and opts.rotate_degrees:
        matrix = affine_matrix(img.shape, opts.rotate_degrees)
        img, mask = warp_bilinear_u8(img, matrix), warp_nearest(mask, matrix)
    if fire[1] and shift:
        matrix = affine_matrix(img.shape, 0.0, (shift, shift))
        img, mask = warp_bilinear_u8(img, matrix), warp_nearest(mask, matrix)
    if fire[2]:
        img = brightness_contrast_u8(img, alpha, beta)
    return from_u8(img), mask


# ---------------------------------------------------------------------------- symmetric mode


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


def _augment_symmetric(image, mask, rng, opts):
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
    return image, mask


def augment_slice(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, opts: AugmentOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one (H,W) image in [-1,1] (float32) and its (H,W) {0,1} brain mask."""
    image = np.asarray(image, np.float32)
    mask = np.asarray(mask)
    run = _augment_reference if opts.mode == "reference" else _augment_symmetric
    image, mask = run(image, mask, rng, opts)
    image = np.where(mask > 0, image, np.float32(-1.0)).astype(np.float32)
    return image, mask


# Tissue-contrast changes of a whole slice (`contrast_changed`): a kind and its range.
CONTRAST_CHANGES = {"bright": (1.25, 1.6), "dark": (0.35, 0.7), "texture": (0.15, 0.3)}


def contrast_changed(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The slice (H,W[,1]) in [-1, 1] with its brain's intensities changed everywhere.

    One of `CONTRAST_CHANGES`, drawn uniformly: the [0, 1] intensity times U(range)
    (`bright`, `dark`), or times 1 + a * smooth unit noise (`texture`, a ~ U(range)). The
    same anatomy in a contrast wrong for it: encoded, its latent is what the denoiser learns
    to flag and restore (`diffusion.contrast_swap_prob`). Outside the brain stays -1.
    """
    kind = list(CONTRAST_CHANGES)[int(rng.integers(len(CONTRAST_CHANGES)))]
    lo, hi = CONTRAST_CHANGES[kind]
    a = float(rng.uniform(lo, hi))
    u = (np.asarray(image, np.float64) + 1.0) / 2.0
    if kind == "texture":
        noise = ndimage.gaussian_filter(rng.standard_normal(u.shape), 1.5)
        factor = 1.0 + a * noise / max(float(noise.std()), 1e-8)
    else:
        factor = a
    m = np.reshape(np.asarray(mask) > 0.5, u.shape)
    out = np.where(m, np.maximum(u * factor, 0.0), 0.0) * 2.0 - 1.0
    return out.astype(np.float32)
