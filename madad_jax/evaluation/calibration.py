"""Map thresholds calibrated on healthy data, stored beside the checkpoint, and the metrics at
that threshold.

`evaluate.threshold` picks the rule:
- `oracle`: no calibration (only the test set's best-of-201 thresholds, as before);
- `healthy_fpr`: the threshold flags `evaluate.target_fpr` of the healthy brain voxels of the
  validation split (brain voxels outside any lesion mask): the (1 - target_fpr) quantile of
  their map values; a voxel is positive when its value is above the threshold;
- `percentile`: the `evaluate.threshold_percentile` percentile of the same voxels.

`calibration.json` (written by `save` into the checkpoint directory and into
`DIR/evaluate/`) records the threshold with its provenance: method, split, voxel count,
target and achieved FPR, the map settings and the checkpoint step. `predict` reads it back
(`find`) to write binary lesion masks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from madad_jax.core import files
from madad_jax.evaluation import lesions

FILE = "calibration.json"
METHODS = ("oracle", "healthy_fpr", "percentile")


def healthy_values(maps: np.ndarray, brainmasks: np.ndarray,
                   segmentations: np.ndarray | None = None) -> np.ndarray:
    """Map values at the brain voxels outside any lesion."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 4:
        maps = maps[..., 0]
    keep = np.asarray(brainmasks).reshape(maps.shape) > 0
    if segmentations is not None:
        keep &= ~(np.asarray(segmentations).reshape(maps.shape) > 0)
    return maps[keep]


def threshold_for(values: np.ndarray, method: str, target_fpr: float = 0.01,
                  percentile: float = 99.0) -> float:
    """The threshold of `method` on healthy `values`."""
    if values.size == 0:
        raise ValueError("no healthy brain voxels to calibrate the threshold on")
    if method == "healthy_fpr":
        q = 1.0 - float(target_fpr)
    elif method == "percentile":
        q = float(percentile) / 100.0
    else:
        raise ValueError(f"evaluate.threshold must be one of {METHODS}, got {method!r}")
    return float(np.quantile(np.asarray(values, np.float64), min(max(q, 0.0), 1.0)))


def calibrate(method: str, maps: np.ndarray, brainmasks: np.ndarray,
              segmentations: np.ndarray | None, *, target_fpr: float = 0.01,
              percentile: float = 99.0, split: str = "val",
              map_settings: Mapping[str, Any] | None = None,
              checkpoint: str = "", step: int | None = None) -> dict[str, Any]:
    """The calibration record: threshold and provenance."""
    values = healthy_values(maps, brainmasks, segmentations)
    t = threshold_for(values, method, target_fpr, percentile)
    rec: dict[str, Any] = {
        "threshold": t,
        "method": method,
        "positive": "map > threshold",
        "split": split,
        "units": "slices" if np.asarray(maps).ndim >= 3 else "voxels",
        "num_units": int(len(maps)),
        "healthy_voxels": int(values.size),
        "healthy_definition": "brain voxels outside the lesion masks",
        "achieved_fpr": float(np.mean(values > t)),
        "map_settings": dict(map_settings or {}),
        "checkpoint": checkpoint,
        "step": step,
    }
    if method == "healthy_fpr":
        rec["target_fpr"] = float(target_fpr)
    else:
        rec["percentile"] = float(percentile)
    return rec


def save(directory: str, record: Mapping[str, Any]) -> str:
    """Write `record` as `directory/calibration.json` atomically; returns the path."""
    return files.write_json_atomic(os.path.join(directory, FILE), files.to_json(dict(record)),
                                   indent=2)


def load(path: str) -> dict[str, Any]:
    """A calibration record; ValueError naming the file when it is not one."""
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable calibration file ({err})") from err
    t = rec.get("threshold") if isinstance(rec, dict) else None
    if not isinstance(t, (int, float)) or not np.isfinite(t):
        raise ValueError(f"{path}: no finite 'threshold' in the calibration file")
    return rec


def find(candidates: Sequence[str]) -> str | None:
    """The first `calibration.json` among `candidates` (files or folders holding one)."""
    for c in candidates:
        if not c:
            continue
        path = os.path.join(c, FILE) if os.path.isdir(c) else c
        if os.path.isfile(path):
            return path
    return None


# --------------------------------------------------------------- metrics at the threshold


def _rates(pred: np.ndarray, gt: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    tp = int((pred & gt).sum())
    fp = int((pred & ~gt & brain).sum())
    fn = int((~pred & gt).sum())
    tn = int((~pred & ~gt & brain).sum())
    nan = float("nan")
    return {"dice": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else nan,
            "precision": tp / (tp + fp) if tp + fp else nan,
            "recall": tp / (tp + fn) if tp + fn else nan,
            "fpr": fp / (fp + tn) if fp + tn else nan}


def _mean(values: Sequence[float]) -> float:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def slice_dice(maps: np.ndarray, segmentations: np.ndarray, threshold: float) -> np.ndarray:
    """Per-slice Dice at `threshold` (the reference's rule: an empty ground truth scores 1
    only for an empty prediction)."""
    n = len(maps)
    pred = np.asarray(maps).reshape(n, -1) > threshold
    gt = np.asarray(segmentations).reshape(n, -1) > 0
    inter = (pred & gt).sum(1)
    ps, gs = pred.sum(1), gt.sum(1)
    return np.where(gs == 0, (ps == 0).astype(np.float64), 2.0 * inter / (ps + gs + 1e-6))


def calibrated_metrics(data: Mapping[str, Any], maps: np.ndarray, record: Mapping[str, Any],
                       spacing: Sequence[float] | None = None) -> tuple[dict[str, Any], list]:
    """Dice, precision, recall and FPR at the calibrated threshold (pooled over the test
    split's brain voxels, and the mean per-slice Dice), and per volume: Dice, TPR, FPR,
    HD95 (mm with `spacing` = (slice, row, column) mm, else voxels) and lesion detection.
    Returns (metrics, one row per volume)."""
    from madad_jax.evaluation import volume_metrics as vm

    t = float(record["threshold"])
    maps = np.asarray(maps, np.float32)
    segs = np.asarray(data["segmentations"]) > 0
    brain = np.asarray(data["brainmasks"]).reshape(maps.shape) > 0
    segs = segs.reshape(maps.shape)
    pred = (maps > t) & brain
    out: dict[str, Any] = {"threshold": t, "method": record.get("method"),
                           "calibrated_on": record.get("split"),
                           **_rates(pred, segs, brain),
                           "mean_slice_dice": float(slice_dice(maps * brain, segs, t).mean())}
    rows = []
    for v in vm.volumes_from_eval(data, maps):
        p = (v.anomaly_map > t) & v.brainmask
        g = v.segmentation if v.segmentation is not None else np.zeros_like(p)
        r = _rates(p, g, v.brainmask)
        det = lesions.detection(p, g)
        sp = spacing
        if p.shape[0] == 1:  # one slice per subject: 2D surfaces
            p, g, sp = p[0], g[0], None if spacing is None else tuple(spacing)[1:]
        rows.append({"subject": v.name, "num_slices": int(len(v.slice_indices)),
                     "lesion_voxels": int(g.sum()), "predicted_voxels": int(p.sum()),
                     "dice": r["dice"], "tpr": r["recall"], "fpr": r["fpr"],
                     "hd95": lesions.hd95(p, g, sp), **det})
    out["per_volume"] = {k: _mean([r[k] for r in rows]) for k in
                         ("dice", "tpr", "fpr", "hd95", "lesion_sensitivity",
                          "lesion_precision", "lesion_f1")}
    out["per_volume"]["num_volumes"] = len(rows)
    out["per_volume"]["hd95_units"] = "mm" if spacing is not None else "voxels"
    return out, rows
