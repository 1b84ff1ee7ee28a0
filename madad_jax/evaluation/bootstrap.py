"""Bootstrap 95 % intervals over subjects (`scipy.stats.bootstrap`, percentile method).

Subjects, not slices, are resampled: every slice of a drawn subject comes along. The slice
protocol's max Dice is re-maximized over its 201 thresholds in every resample (the
per-slice Dice curves are computed once); AUROC and AP are recomputed on the pooled pixels
of the drawn subjects (`pixel_resamples` resamples, they are the slow ones); per-unit
figures (calibrated Dice, per-volume Dice, HD95, ...) are means over the drawn subjects.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from madad_jax.evaluation import metrics

CONFIDENCE = 0.95


def interval(values_of: Callable[[np.ndarray], float], n_subjects: int,
             n_resamples: int, seed: int = 0) -> dict[str, Any]:
    """The 95 % percentile interval of `values_of(subject indices)` over resamples."""
    if n_subjects < 2 or n_resamples < 1:
        return {"low": None, "high": None, "n_resamples": 0, "n_subjects": n_subjects}
    idx = np.arange(n_subjects)
    with warnings.catch_warnings():  # a degenerate resample distribution (e.g. all 1.0)
        warnings.simplefilter("ignore")
        res = stats.bootstrap((idx,), lambda s: values_of(np.asarray(s, np.int64)),
                              vectorized=False, n_resamples=int(n_resamples),
                              confidence_level=CONFIDENCE, method="percentile",
                              rng=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    return {"low": _num(lo), "high": _num(hi), "n_resamples": int(n_resamples),
            "n_subjects": n_subjects, "confidence": CONFIDENCE, "method": "percentile",
            "unit": "subject"}


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _groups(subjects: Sequence[str]) -> list[np.ndarray]:
    subjects = np.asarray([str(s) for s in subjects])
    return [np.flatnonzero(subjects == s) for s in sorted(set(subjects.tolist()))]


def slice_intervals(maps: np.ndarray, segmentations: np.ndarray, subjects: Sequence[str],
                    n_resamples: int = 1000, pixel_resamples: int = 200,
                    seed: int = 0) -> dict[str, Any]:
    """Intervals of the slice protocol's `max_dice`, `auroc` and `ap`."""
    maps = np.asarray(maps, np.float32)
    segs = np.asarray(segmentations) > 0
    groups = _groups(subjects)
    curves = np.stack([metrics.dice_curve(maps[i:i + 1], segs[i:i + 1])
                       for i in range(len(maps))])

    def rows(s: np.ndarray) -> np.ndarray:
        return np.concatenate([groups[i] for i in s])

    def max_dice(s: np.ndarray) -> float:
        return float(max(0.0, curves[rows(s)].mean(0).max()))

    def pooled(fn: Callable) -> Callable[[np.ndarray], float]:
        def f(s: np.ndarray) -> float:
            r = rows(s)
            y = segs[r].ravel()
            if not 0 < y.sum() < y.size:
                return float("nan")
            return float(fn(y, maps[r].ravel()))
        return f

    n = len(groups)
    return {"max_dice": interval(max_dice, n, n_resamples, seed),
            "auroc": interval(pooled(roc_auc_score), n, pixel_resamples, seed),
            "ap": interval(pooled(average_precision_score), n, pixel_resamples, seed)}


def mean_intervals(rows: Sequence[Mapping[str, Any]], keys: Sequence[str],
                   n_resamples: int = 1000, seed: int = 0,
                   subject_key: str = "subject") -> dict[str, Any]:
    """Intervals of the mean of each of `keys` over `rows` (NaN left out), by subject."""
    groups = _groups([r[subject_key] for r in rows])
    out = {}
    for k in keys:
        vals = np.asarray([np.nan if r.get(k) is None else r[k] for r in rows], np.float64)

        def mean(s: np.ndarray, vals: np.ndarray = vals) -> float:
            v = vals[np.concatenate([groups[i] for i in s])]
            v = v[np.isfinite(v)]
            return float(v.mean()) if v.size else float("nan")

        out[k] = interval(mean, len(groups), n_resamples, seed)
    return out
