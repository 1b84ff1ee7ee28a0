"""Lesions of a binary mask: connected components as a table, surface distance (HD95) and
per-lesion detection.

- `components`: one row per 26-connected component (scipy.ndimage.label) with its voxel
  count, volume in mL (voxel volume from the affine), centroid in world millimetres (the
  affine applied to the voxel centre of mass), peak and mean score, and its bounding box in
  voxel indices (inclusive).
- `hd95`: the 95th percentile of the symmetric surface distances between two masks, in mm
  from the voxel spacing (Euclidean distance transforms, scipy.ndimage); the surface of a
  mask is its voxels that its own 6-connected erosion removes. NaN when either is empty.
- `detection`: lesion-wise hits: a ground-truth component counts as detected when any of
  its voxels is predicted; a predicted component that touches no ground truth is a false
  positive.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from madad_jax.core import files

CONNECTIVITY_26 = np.ones((3, 3, 3), bool)
COLUMNS = ("lesion", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
           "peak_score", "mean_score", "bbox_min", "bbox_max")


def _structure(ndim: int) -> np.ndarray:
    return np.ones((3,) * ndim, bool)


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Fully connected (26 in 3D, 8 in 2D) components of `mask`."""
    m = np.asarray(mask, bool)
    labels, n = ndimage.label(m, structure=_structure(m.ndim))
    return labels, int(n)


def remove_small(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """`mask` without the components of fewer than `min_voxels` voxels."""
    m = np.asarray(mask, bool)
    if min_voxels <= 1 or not m.any():
        return m
    labels, n = label(m)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


def components(mask: np.ndarray, scores: np.ndarray, affine: np.ndarray) -> list[dict[str, Any]]:
    """One row per connected component of the 3D `mask`, largest first."""
    m = np.asarray(mask, bool)
    scores = np.asarray(scores, np.float64)
    affine = np.asarray(affine, np.float64)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    labels, n = label(m)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    counts = ndimage.sum_labels(np.ones_like(scores), labels, index)
    centres = ndimage.center_of_mass(np.ones_like(scores), labels, index)
    peaks = ndimage.maximum(scores, labels, index)
    means = ndimage.mean(scores, labels, index)
    boxes = ndimage.find_objects(labels)
    rows = []
    for i in range(n):
        world = affine[:3, :3] @ np.asarray(centres[i]) + affine[:3, 3]
        box = boxes[i]
        rows.append({
            "voxels": int(counts[i]),
            "volume_ml": float(counts[i] * voxel_ml),
            "centroid_x_mm": float(world[0]),
            "centroid_y_mm": float(world[1]),
            "centroid_z_mm": float(world[2]),
            "peak_score": float(peaks[i]),
            "mean_score": float(means[i]),
            "bbox_min": [int(s.start) for s in box],
            "bbox_max": [int(s.stop) - 1 for s in box],
        })
    rows.sort(key=lambda r: -r["voxels"])
    for k, r in enumerate(rows, 1):
        r["lesion"] = k
    return [{c: r[c] for c in COLUMNS} for r in rows]


def table_tsv(rows: Sequence[dict[str, Any]]) -> str:
    """The component rows as TSV text (bounding boxes as `i,j,k`), a header even when empty."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([",".join(map(str, r[c])) if isinstance(r[c], list) else
                    (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c]) for c in COLUMNS])
    return buf.getvalue()


def write_table(tsv_path: str | os.PathLike, json_path: str | os.PathLike | None,
                rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """The lesion table as TSV, and as JSON (`lesions` plus `extra`) when `json_path` is given."""
    files.atomic_write(tsv_path, table_tsv(rows))
    if json_path is not None:
        obj = dict(extra or {}, num_lesions=len(rows),
                   total_volume_ml=float(sum(r["volume_ml"] for r in rows)), lesions=list(rows))
        files.write_json_atomic(json_path, files.to_json(obj), indent=2, sort_keys=False)


def _surface(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(m.ndim, 1),
                                       border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray,
                      spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distances (mm) from every surface voxel of `a` to the surface of `b`, then of `b` to `a`."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    sa, sb = _surface(a), _surface(b)
    sampling = None if spacing is None else tuple(float(s) for s in spacing)
    to_b = ndimage.distance_transform_edt(~sb, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~sa, sampling=sampling)
    return np.concatenate([to_b[sa], to_a[sb]])


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile Hausdorff distance in mm (voxel units without `spacing`); NaN when
    either mask is empty."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if not p.any() or not g.any():
        return float("nan")
    return float(np.percentile(surface_distances(p, g, spacing), 95))


def detection(pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """Lesion-wise detection counts and rates for one volume."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    gl, ng = label(g)
    pl, npred = label(p)
    hit = np.unique(gl[p & g])
    detected = int(np.count_nonzero(hit))
    touching = np.unique(pl[p & g])
    true_pred = int(np.count_nonzero(touching))
    fp = npred - true_pred
    sens = detected / ng if ng else float("nan")
    prec = true_pred / npred if npred else float("nan")
    f1 = (2 * sens * prec / (sens + prec)
          if ng and npred and (sens + prec) > 0 else (0.0 if ng or npred else float("nan")))
    return {"gt_lesions": ng, "pred_lesions": npred, "detected_lesions": detected,
            "false_positive_lesions": fp, "lesion_sensitivity": sens,
            "lesion_precision": prec, "lesion_f1": f1}
