"""The reference's slice-level evaluation: max Dice, F1-max, AUROC and AP on pooled pixels."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

DICE_THRESHOLDS = np.linspace(0.0, 1.0, 201)


def dice_curve(
    maps: np.ndarray, segmentations: np.ndarray, thresholds: np.ndarray = DICE_THRESHOLDS
) -> np.ndarray:
    """Mean per-slice Dice (eps 1e-6) at each threshold, shape (len(thresholds),).

    A pixel is positive when its value exceeds the threshold, or is >= 1 (the reference
    binarizes in place: values above the threshold become 1, then values below 1 become 0).
    A slice with an empty ground truth scores 1 if its prediction is empty, else 0.
    """
    maps = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    segs = np.asarray(segmentations).reshape(len(maps), -1) > 0
    th = np.asarray(thresholds, dtype=np.float64)
    scores = np.empty((len(maps), len(th)))
    for i, (m, s) in enumerate(zip(maps, segs, strict=True)):
        n_pred = _count_positive(np.sort(m), th)
        n_gt = int(s.sum())
        if n_gt == 0:
            scores[i] = (n_pred == 0).astype(np.float64)
            continue
        inter = _count_positive(np.sort(m[s]), th)
        scores[i] = 2.0 * inter / (n_pred + n_gt + 1e-6)
    return scores.mean(axis=0)


def _count_positive(sorted_values: np.ndarray, th: np.ndarray) -> np.ndarray:
    n = len(sorted_values)
    above = n - np.searchsorted(sorted_values, th, side="right")
    at_least_one = n - np.searchsorted(sorted_values, 1.0, side="left")
    return np.where(th < 1.0, above, at_least_one)


def max_dice(maps: np.ndarray, segmentations: np.ndarray) -> float:
    """Best mean per-slice Dice over 201 thresholds in [0, 1] (oracle threshold)."""
    return float(max(0.0, dice_curve(maps, segmentations).max()))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Best F1 along the pooled precision-recall curve (eps 1e-10, as anomalib's F1Max)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(np.max(2 * precision * recall / (precision + recall + 1e-10)))


def slice_metrics(maps: np.ndarray, segmentations: np.ndarray) -> dict[str, float]:
    """The reference's four numbers for (N,H,W) maps and (N,H,W) ground truths."""
    maps = np.asarray(maps, dtype=np.float32)
    gt = (np.asarray(segmentations) > 0).astype(np.int32)
    if maps.shape != gt.shape:
        raise ValueError(f"maps {maps.shape} and segmentations {gt.shape} differ in shape")
    flat_s, flat_y = maps.ravel(), gt.ravel()
    both = 0 < flat_y.sum() < flat_y.size
    return dict(
        max_dice=max_dice(maps, gt),
        f1_max=f1_max(flat_s, flat_y) if both else float("nan"),
        auroc=float(roc_auc_score(flat_y, flat_s)) if both else float("nan"),
        ap=float(average_precision_score(flat_y, flat_s)) if both else float("nan"),
    )
