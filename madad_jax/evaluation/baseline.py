"""A plain intensity-threshold anomaly detector: what a model of normal anatomy must beat.

Anomaly scores are computed from the preprocessed slices themselves (images in [-1, 1],
x = (image + 1) / 2 in [0, 1]), 0 outside the brain mask, optionally after a Gaussian
smoothing restricted to the brain (normalized convolution, `sigma` in pixels):

- "bright": x. Thresholding the raw intensity is the classic detector of hyper-intense
  lesions, a strong baseline on FLAIR (Meissen et al., 2021).
- "dark": 1 - x, its mirror for hypo-intense lesions.
- "deviation": |x - m| with m the median intensity of the slice's brain: a two-sided
  detector for lesions of either contrast.

With `per_slice=True` the scores of each slice are rescaled to span [0, 1] over its brain, so
that one threshold means the same fraction of every slice's range.

`evaluate` scores every variant with the model's protocol (`madad_jax.evaluation.metrics`: max Dice
over 201 thresholds, F1-max, AUROC, AP) and reports the variant with the best max Dice on a
validation split when one is given (as the model's sampling settings are chosen), else on the
scored slices themselves (optimistic).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from madad_jax.evaluation import metrics

KINDS = ("bright", "dark", "deviation")


def _masked_smooth(x: np.ndarray, m: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of each slice over its brain pixels only."""
    s = (0.0, sigma, sigma)
    num = ndi.gaussian_filter(x * m, s)
    den = ndi.gaussian_filter(m.astype(np.float64), s)
    return np.where(m, num / np.maximum(den, 1e-6), 0.0)


def score_maps(
    images: np.ndarray,
    brainmasks: np.ndarray,
    kind: str = "deviation",
    sigma: float = 0.0,
    per_slice: bool = False,
) -> np.ndarray:
    """Anomaly maps (N, H, W) float32 in [0, 1] for images (N, H, W[, 1]) in [-1, 1]."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    x = (np.asarray(images, np.float64).reshape(np.shape(brainmasks)) + 1.0) / 2.0
    m = np.asarray(brainmasks) > 0.5
    if sigma > 0:
        x = _masked_smooth(x, m, sigma)
    if kind == "bright":
        s = x
    elif kind == "dark":
        s = 1.0 - x
    else:
        med = np.array(
            [np.median(xi[mi]) if mi.any() else 0.0 for xi, mi in zip(x, m, strict=True)]
        )
        s = np.abs(x - med[:, None, None])
    s = np.where(m, s, 0.0)
    if per_slice:
        big = np.finfo(np.float64).max
        lo = np.where(m, s, big).min(axis=(1, 2), keepdims=True)
        hi = np.where(m, s, -big).max(axis=(1, 2), keepdims=True)
        s = np.where(m, (s - lo) / np.maximum(hi - lo, 1e-8), 0.0)
    return np.clip(s, 0.0, 1.0).astype(np.float32)


def variant_name(kind: str, sigma: float, per_slice: bool) -> str:
    return f"{kind}_sigma{sigma:g}" + ("_per_slice" if per_slice else "")


def evaluate(
    images: np.ndarray,
    brainmasks: np.ndarray,
    segmentations: np.ndarray,
    kinds: Sequence[str] = KINDS,
    sigmas: Sequence[float] = (0.0, 1.0, 2.0),
    per_slice: Sequence[bool] = (False, True),
    select_on: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The chosen variant's metrics (max_dice, f1_max, auroc, ap) on the given slices, its
    name under `variant`, and every variant's max Dice under `variants`.

    With `select_on=(images, brainmasks, segmentations)` of a validation split, the variant
    is the best there (`selected_on: "val"`, `variants` holds the val scores); without it,
    the best on the scored slices themselves (`selected_on: "test"`, optimistic).
    """
    sel_images, sel_masks, sel_segs = select_on or (images, brainmasks, segmentations)
    options = list(itertools.product(kinds, sigmas, per_slice))
    dice = {variant_name(*v): metrics.max_dice(score_maps(sel_images, sel_masks, *v), sel_segs)
            for v in options}
    best = max(dice, key=dice.get)  # the first of equal scores
    kind, sigma, ps = next(v for v in options if variant_name(*v) == best)
    result = metrics.slice_metrics(score_maps(images, brainmasks, kind, sigma, ps), segmentations)
    return dict(result, variant=best, variants=dice,
                selected_on="test" if select_on is None else "val")
