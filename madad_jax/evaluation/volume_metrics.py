"""The per-volume evaluation protocol of Behrendt et al. (pDDPM / cDDPM), a breakdown of both
protocols by lesion size, and CSV writers.

Per-volume protocol, as Behrendt et al.'s evaluation code runs it (their `_test_step`):
1. each subject's slice maps are stacked into a volume (slice axis first, by slice index);
2. the map is multiplied by the brain mask eroded `erosion_iterations` (3) times, slice by
   slice, with the 2D 4-connected structuring element;
3. a 5x5x5 median filter (scipy.ndimage, mode "reflect") smooths the masked volume;
4. one threshold is chosen on the validation volumes: the one with the best Dice over all
   their voxels pooled together (Behrendt et al. search it by bisection; here it is the best
   of `THRESHOLD_STEPS` evenly spaced thresholds between the smallest and largest value, which
   is finer than their 10 bisection steps);
5. on each test volume, voxels >= threshold are positive, and 26-connected components of at
   most `max_removed_component` (7) voxels are removed, as their `filled_area <= 7` rule does;
6. per volume: Dice = 2|P∩G| / (|P| + |G|) (NaN when both are empty, left out of the mean)
   and AUPRC (sklearn's average precision) of the filtered map of step 3 over all voxels
   (NaN for a volume without lesion). Both are averaged over volumes.

Behrendt et al. erode `width // 25` times, which is 3 at their 96-pixel evaluation size;
3 is kept here at every image size. Their positives are `map > threshold`; with the
threshold search below, `>=` and `>` differ only on ties.

Lesion-size breakdown. The MAD-AD paper reports small / medium / large lesions for
IXI -> ATLAS without giving the cut-offs, so the bins are made from the test set itself:
by default the terciles (1/3 and 2/3 quantiles) of the lesion sizes of the units that
contain lesion -- lesion pixels per slice for the slice protocol, lesion voxels per stacked
volume for the volume protocol. Fixed edges `(a, b)` can be given instead. A unit is small
when its size < a, medium when a <= size < b and large when size >= b. Units without lesion
belong to no bin. The edges actually used are written beside the results.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score

from madad_jax.core import files
from madad_jax.core.errors import InputError

SIZE_BINS = ("small", "medium", "large")
MEDIAN_SIZE = 5
EROSION_ITERATIONS = 3
MAX_REMOVED_COMPONENT = 7
THRESHOLD_STEPS = 4097

# Erosion within each slice (axis 0 is the slice axis of a stacked volume).
_SLICE_CROSS = ndimage.generate_binary_structure(2, 1)[None]
_CONNECTIVITY_26 = np.ones((3, 3, 3), bool)


@dataclasses.dataclass
class VolumeMaps:
    """One subject's slice maps stacked into a volume (slices, H, W)."""

    name: str
    anomaly_map: np.ndarray  # float32
    brainmask: np.ndarray  # bool
    segmentation: np.ndarray | None  # bool
    slice_indices: np.ndarray  # int, the slice each plane came from

    @property
    def lesion_voxels(self) -> int:
        return 0 if self.segmentation is None else int(self.segmentation.sum())


def subject_of(name: str) -> str:
    """The subject id of a slice name `{id}-slice_{k}` (the reference's naming)."""
    return name.rsplit("-slice_", 1)[0]


def _slice_number(name: str) -> int:
    tail = name.rsplit("-slice_", 1)[-1]
    digits = "".join(c for c in tail.split("-")[0] if c.isdigit())
    return int(digits) if digits else 0


def stack_volumes(
    maps: np.ndarray,
    brainmasks: np.ndarray,
    segmentations: np.ndarray | None,
    subjects: Sequence[str],
    slice_indices: Sequence[int],
) -> list[VolumeMaps]:
    """Group (N,H,W) slice arrays by subject into volumes, slices ordered by index."""
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 4:
        maps = maps[..., 0]
    subjects = np.asarray(subjects)
    slice_indices = np.asarray(slice_indices, np.int64)
    if not (len(maps) == len(brainmasks) == len(subjects) == len(slice_indices)):
        raise ValueError("maps, brainmasks, subjects and slice_indices differ in length")
    out = []
    for name in sorted(set(subjects.tolist())):
        rows = np.flatnonzero(subjects == name)
        rows = rows[np.argsort(slice_indices[rows], kind="stable")]
        out.append(
            VolumeMaps(
                name=str(name),
                anomaly_map=maps[rows],
                brainmask=np.asarray(brainmasks)[rows] > 0,
                segmentation=None if segmentations is None
                else np.asarray(segmentations)[rows] > 0,
                slice_indices=slice_indices[rows],
            )
        )
    return out


def volumes_from_eval(data: Mapping[str, Any], maps: np.ndarray) -> list[VolumeMaps]:
    """Volumes from an evaluation split (`pipeline.load_eval` / `png.read_reference_split`).

    Subjects and slice indices come from the split's provenance when it has them, else from
    the reference's slice names `{id}-slice_{k}`.
    """
    names = list(data["names"])
    subjects = data.get("subjects")
    if subjects is None or len(subjects) != len(names):
        subjects = [subject_of(n) for n in names]
    indices = data.get("slice_indices")
    if indices is None or len(indices) != len(names):
        indices = [_slice_number(n) for n in names]
    return stack_volumes(maps, data["brainmasks"], data.get("segmentations"), subjects, indices)


# ------------------------------------------------------------------------ post-processing


def postprocess_map(
    anomaly_map: np.ndarray,
    brainmask: np.ndarray,
    erosion_iterations: int = EROSION_ITERATIONS,
    median_size: int = MEDIAN_SIZE,
) -> np.ndarray:
    """Mask a stacked (S,H,W) map by the per-slice eroded brain mask, then median-filter it."""
    mask = np.asarray(brainmask, bool)
    if erosion_iterations > 0:
        mask = ndimage.binary_erosion(mask, structure=_SLICE_CROSS, iterations=erosion_iterations)
    masked = np.asarray(anomaly_map, np.float32) * mask
    if median_size > 1:
        masked = ndimage.median_filter(masked, size=median_size)
    return masked


def remove_small_components(
    binary: np.ndarray, max_removed: int = MAX_REMOVED_COMPONENT
) -> np.ndarray:
    """Drop 26-connected components of at most `max_removed` voxels."""
    labels, n = ndimage.label(np.asarray(binary, bool), structure=_CONNECTIVITY_26)
    if n == 0:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    keep = sizes > max_removed
    keep[0] = False
    return keep[labels]


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P| + |G|); NaN when both are empty."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    denom = int(p.sum()) + int(g.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, g).sum()) / denom


def auprc(scores: np.ndarray, gt: np.ndarray) -> float:
    """Average precision over all voxels; NaN without any lesion voxel."""
    g = np.asarray(gt, bool).ravel()
    if not g.any():
        return float("nan")
    return float(average_precision_score(g, np.asarray(scores, np.float64).ravel()))


def pooled_dice_curve(
    maps: Iterable[np.ndarray], segmentations: Iterable[np.ndarray], thresholds: np.ndarray
) -> np.ndarray:
    """Dice of `map >= t` over all voxels of all volumes pooled, for each t (ascending).

    Streams through the volumes with histograms, so memory stays at one volume.
    """
    th = np.asarray(thresholds, np.float64)
    edges = np.append(th, np.inf)
    n_pred = np.zeros(len(th), np.int64)
    n_hit = np.zeros(len(th), np.int64)
    n_gt = 0
    for m, s in zip(maps, segmentations, strict=True):
        m = np.asarray(m, np.float64).ravel()
        s = np.asarray(s, bool).ravel()
        n_gt += int(s.sum())
        # counts of values >= each threshold: reversed cumulative sums of the histograms
        n_pred += np.cumsum(np.histogram(m, edges)[0][::-1])[::-1]
        n_hit += np.cumsum(np.histogram(m[s], edges)[0][::-1])[::-1]
    denom = n_pred + n_gt
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * n_hit / np.maximum(denom, 1), np.nan)


def best_threshold(
    maps: Sequence[np.ndarray], segmentations: Sequence[np.ndarray],
    steps: int = THRESHOLD_STEPS,
) -> tuple[float, float]:
    """(threshold, pooled Dice) maximizing the pooled Dice of `map >= threshold`."""
    if not any(np.asarray(s, bool).any() for s in segmentations):
        raise ValueError(
            "the validation volumes hold no lesion voxel: the per-volume protocol chooses its "
            "threshold on lesioned validation scans"
        )
    lo = min(float(np.min(m)) for m in maps)
    hi = max(float(np.max(m)) for m in maps)
    th = np.linspace(lo, hi, steps) if hi > lo else np.array([lo])
    curve = pooled_dice_curve(maps, segmentations, th)
    i = int(np.nanargmax(curve))
    return float(th[i]), float(curve[i])


# ------------------------------------------------------------------------- size breakdown


def size_edges(sizes: Sequence[int], edges: Sequence[float] | None = None) -> tuple[float, float]:
    """The (a, b) bin edges: given, or the terciles of the positive sizes."""
    if edges is not None and len(edges):
        a, b = (float(e) for e in edges)
        if not a <= b:
            raise ValueError(f"lesion-size edges must be ascending, got {tuple(edges)}")
        return a, b
    pos = np.asarray([s for s in sizes if s > 0], np.float64)
    if pos.size == 0:
        return float("nan"), float("nan")
    a, b = np.quantile(pos, [1 / 3, 2 / 3])
    return float(a), float(b)


def size_bin(size: float, edges: tuple[float, float]) -> str:
    """"small" / "medium" / "large" for a lesion size, "" for no lesion."""
    if size <= 0 or not np.isfinite(edges[0]):
        return ""
    a, b = edges
    return "small" if size < a else ("medium" if size < b else "large")


def describe_bins(edges: tuple[float, float], unit: str, given: bool) -> dict[str, Any]:
    a, b = edges
    return {
        "unit": unit,
        "method": "fixed edges" if given else "terciles of the lesioned units' sizes",
        "edges": [a, b],
        "small": f"0 < size < {a:g}",
        "medium": f"{a:g} <= size < {b:g}",
        "large": f"size >= {b:g}",
    }


def slice_size_breakdown(
    maps: np.ndarray, segmentations: np.ndarray, edges: Sequence[float] | None = None
) -> dict[str, Any]:
    """The reference's slice metrics (`metrics.slice_metrics`) within each lesion-size bin."""
    from madad_jax.evaluation.metrics import slice_metrics

    maps = np.asarray(maps, np.float32)
    if maps.ndim == 4:
        maps = maps[..., 0]
    segs = np.asarray(segmentations) > 0
    sizes = segs.reshape(len(segs), -1).sum(1)
    e = size_edges(sizes, edges)
    bins = np.array([size_bin(s, e) for s in sizes])
    out: dict[str, Any] = {"bins": describe_bins(e, "lesion pixels per slice", bool(edges))}
    for name in SIZE_BINS:
        rows = np.flatnonzero(bins == name)
        entry: dict[str, Any] = {"n": int(rows.size)}
        if rows.size:
            entry.update(slice_metrics(maps[rows], segs[rows]))
        out[name] = entry
    return out


# ------------------------------------------------------------------------- the protocol


def volume_protocol(
    test: Sequence[VolumeMaps],
    val: Sequence[VolumeMaps] | None = None,
    threshold: float | None = None,
    edges: Sequence[float] | None = None,
    erosion_iterations: int = EROSION_ITERATIONS,
    median_size: int = MEDIAN_SIZE,
    max_removed_component: int = MAX_REMOVED_COMPONENT,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Behrendt et al.'s per-volume protocol; returns (metrics, one CSV row per test volume).

    The threshold is chosen on `val` (best pooled Dice after post-processing) unless
    `threshold` is given.
    """
    if not test:
        raise InputError("no test volumes to evaluate")

    def post(v: VolumeMaps) -> np.ndarray:
        return postprocess_map(v.anomaly_map, v.brainmask, erosion_iterations, median_size)

    if threshold is None:
        if not val:
            raise InputError("the per-volume protocol needs validation volumes or a threshold")
        if any(v.segmentation is None for v in val):
            raise InputError("the validation volumes need segmentations to choose a threshold")
        val_maps = [post(v) for v in val]
        threshold, val_dice = best_threshold(val_maps, [v.segmentation for v in val])
        source = "best pooled Dice on the validation volumes"
    else:
        val_dice, source = float("nan"), "given"

    rows = []
    for v in test:
        if v.segmentation is None:
            raise InputError(f"{v.name}: the per-volume protocol needs a segmentation")
        m = post(v)
        pred = remove_small_components(m >= threshold, max_removed_component)
        rows.append({
            "subject": v.name,
            "num_slices": int(len(v.slice_indices)),
            "lesion_voxels": v.lesion_voxels,
            "predicted_voxels": int(pred.sum()),
            "dice": dice(pred, v.segmentation),
            "auprc": auprc(m, v.segmentation),
        })
    e = size_edges([r["lesion_voxels"] for r in rows], edges)
    for r in rows:
        r["size_bin"] = size_bin(r["lesion_voxels"], e)
        r["threshold"] = float(threshold)

    breakdown: dict[str, Any] = {
        "bins": describe_bins(e, "lesion voxels per stacked volume", bool(edges))
    }
    for name in SIZE_BINS:
        sel = [r for r in rows if r["size_bin"] == name]
        breakdown[name] = {"n": len(sel), **_means(sel)}
    result = {
        "protocol": "per-volume (Behrendt et al.)",
        "threshold": float(threshold),
        "threshold_source": source,
        "val_pooled_dice": val_dice,
        "num_volumes": len(rows),
        "num_volumes_with_lesion": sum(r["lesion_voxels"] > 0 for r in rows),
        **_means(rows),
        "settings": {
            "erosion_iterations": int(erosion_iterations),
            "erosion": "per slice, 2D 4-connected",
            "median_size": int(median_size),
            "max_removed_component_voxels": int(max_removed_component),
            "component_connectivity": 26,
            "positive": "map >= threshold",
        },
        "by_lesion_size": breakdown,
    }
    return result, rows


def _means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    out = {}
    for k in ("dice", "auprc"):
        vals = np.asarray([r[k] for r in rows], np.float64)
        ok = vals[np.isfinite(vals)]
        out[k] = float(ok.mean()) if ok.size else float("nan")
        out[f"{k}_std"] = float(ok.std()) if ok.size else float("nan")
    return out


def slice_rows(
    names: Sequence[str],
    maps: np.ndarray,
    segmentations: np.ndarray | None,
    threshold: float | None = None,
    edges: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One CSV row per slice: lesion size and bin, map statistics, Dice at `threshold`.

    Binarization follows the reference's slice protocol (`> threshold`, or `>= 1`).
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 4:
        maps = maps[..., 0]
    flat = maps.reshape(len(maps), -1)
    segs = None if segmentations is None else np.asarray(segmentations).reshape(len(maps), -1) > 0
    sizes = np.zeros(len(maps), np.int64) if segs is None else segs.sum(1)
    e = size_edges(sizes, edges)
    rows = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {
            "name": str(name),
            "subject": subject_of(str(name)),
            "lesion_pixels": int(sizes[i]),
            "size_bin": size_bin(int(sizes[i]), e),
            "map_max": float(flat[i].max()),
            "map_mean": float(flat[i].mean()),
        }
        if segs is not None and threshold is not None:
            pred = (flat[i] > threshold) | (flat[i] >= 1.0)
            n_gt = int(segs[i].sum())
            # the reference's rule: an empty ground truth scores 1 only for an empty prediction
            row["dice"] = (float(not pred.any()) if n_gt == 0 else
                           2.0 * int((pred & segs[i]).sum()) / (int(pred.sum()) + n_gt + 1e-6))
            row["threshold"] = float(threshold)
        rows.append(row)
    return rows


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write rows (dicts) as CSV, atomically; columns in first-seen order."""
    path = os.fspath(path)
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    with files.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
    return path


def _fmt(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        return "" if not np.isfinite(v) else f"{float(v):.6g}"
    return v
