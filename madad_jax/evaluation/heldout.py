"""The held-out real-anatomy test: lesioned brains the model never saw, scored through predict.

For each volume of `madad_jax.data.heldout` (split `test` or `val`), the scan, its brain mask
and its ground truth are written as NIfTI files, `predict.run` maps the scan exactly as a
user's `--config.mode=predict` run does, and the volume is scored by its best Dice inside
the brain (the best of every threshold, per volume), next to a plain intensity threshold of
the same scan (the better of bright and dark, per volume). The figures go to
`DIR/heldout/<split>/heldout.json` and a Markdown table beside it; no setting is chosen here.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import nibabel as nib
import numpy as np

from madad_jax.core import files
from madad_jax.data import heldout, preprocess
from madad_jax.evaluation import predict


def best_dice(scores: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The best Dice of `scores > t` over every threshold t, and that threshold (exact: each
    distinct score is tried)."""
    s = np.asarray(scores, np.float64).ravel()
    g = np.asarray(gt, bool).ravel()
    n_gt = int(g.sum())
    if n_gt == 0 or s.size == 0:
        return 0.0, float("nan")
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    tp = np.cumsum(g[order])
    k = np.arange(1, s.size + 1)
    # Only cut where the score changes: all voxels of one value fall on the same side.
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    dice = np.where(last, 2.0 * tp / (k + n_gt), -1.0)
    i = int(np.argmax(dice))
    nxt = s_sorted[i + 1] if i + 1 < s.size else s_sorted[i] - 1.0
    return float(dice[i]), float(0.5 * (s_sorted[i] + nxt))


def intensity_dice(image: np.ndarray, brain: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """Best Dice of a plain intensity threshold inside the brain, the better sign."""
    x = preprocess.normalize_percentile(image, brain, preprocess.SliceOptions.percentiles)[brain]
    g = gt[brain]
    bright, dark = best_dice(x, g)[0], best_dice(-x, g)[0]
    return dict(dice=max(bright, dark), sign="bright" if bright >= dark else "dark")


def _write(path: str, data: np.ndarray, affine: np.ndarray, dtype) -> str:
    img = nib.Nifti1Image(np.asarray(data, dtype), affine)
    img.set_qform(affine, code=4)  # MNI152
    img.set_sform(affine, code=4)
    with files.atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)
    return path


def write_inputs(vol: heldout.Volume, folder: str) -> dict[str, str]:
    """The volume as scan / brain mask / segmentation NIfTI files in `folder`."""
    os.makedirs(folder, exist_ok=True)
    return dict(
        input=_write(os.path.join(folder, f"{vol.name}.nii.gz"), vol.image, vol.affine,
                     np.float32),
        brainmask=_write(os.path.join(folder, f"{vol.name}_brainmask.nii.gz"), vol.brainmask,
                         vol.affine, np.uint8),
        segmentation=_write(os.path.join(folder, f"{vol.name}_seg.nii.gz"), vol.seg,
                            vol.affine, np.uint8),
    )


def score_volume(vol: heldout.Volume, anomaly_path: str) -> dict[str, Any]:
    """Per-volume figures of one predicted map against its ground truth."""
    amap = np.asarray(nib.load(anomaly_path).dataobj, np.float32)
    brain, gt = vol.brainmask > 0, vol.seg > 0
    dice, thr = best_dice(amap[brain], gt[brain])
    from sklearn.metrics import roc_auc_score

    base = intensity_dice(vol.image, brain, gt)
    return dict(name=vol.name, kind=vol.lesions[0]["kind"] if vol.lesions else "",
                lesion_voxels=int(gt.sum()), model_dice=dice, model_threshold=thr,
                voxel_auroc=float(roc_auc_score(gt[brain], amap[brain])),
                intensity_dice=base["dice"], intensity_sign=base["sign"],
                lesions=vol.lesions)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    model = [r["model_dice"] for r in rows]
    base = [r["intensity_dice"] for r in rows]
    return dict(mean_model_dice=float(np.mean(model)), mean_intensity_dice=float(np.mean(base)),
                model_minus_intensity=float(np.mean(model) - np.mean(base)),
                mean_voxel_auroc=float(np.mean([r["voxel_auroc"] for r in rows])))


def markdown(result: dict[str, Any]) -> str:
    lines = ["| volume | lesion voxels | model best Dice | intensity best Dice (sign) | "
             "voxel AUROC |", "|---|---|---|---|---|"]
    for r in result["volumes"]:
        lines.append(f"| {r['name']} | {r['lesion_voxels']} | {r['model_dice']:.3f} | "
                     f"{r['intensity_dice']:.3f} ({r['intensity_sign']}) | "
                     f"{r['voxel_auroc']:.3f} |")
    s = result["summary"]
    lines.append(f"| **mean** | | **{s['mean_model_dice']:.3f}** | "
                 f"**{s['mean_intensity_dice']:.3f}** | {s['mean_voxel_auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def run(config, workdir: str, split: str = "test", seed: int = 0) -> dict[str, Any]:
    """Build, predict and score the held-out `split`; returns what heldout.json holds."""
    out_dir = os.path.join(workdir, "heldout", split)
    files.check_writable(out_dir)
    vols = heldout.volumes(split, seed)
    rows = []
    for i, vol in enumerate(vols):
        # Progress: each volume is a whole predict (tens of seconds on a CPU).
        print(f"heldout {split}: volume {i + 1}/{len(vols)} {vol.name}: predicting",
              file=sys.stderr, flush=True)
        paths = write_inputs(vol, os.path.join(out_dir, "inputs"))
        cfg = config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.mode = "predict"
            cfg.predict.update(paths, output=os.path.join(out_dir, "predict"))
        written = predict.run(cfg, workdir)
        row = score_volume(vol, written["anomaly"])
        with open(written["summary"]) as f:
            row["predict_warnings"] = json.load(f).get("warnings", [])
        rows.append(row)
        print(f"heldout {split}: volume {i + 1}/{len(vols)} {vol.name}: model Dice "
              f"{row['model_dice']:.3f}, intensity {row['intensity_dice']:.3f}",
              file=sys.stderr, flush=True)
    result = dict(split=split, seed=seed, source=heldout.FILES[split],
                  protocol="best Dice inside the brain per volume (every threshold); "
                           "intensity: the better of bright and dark per volume",
                  volumes=rows, summary=summarize(rows))
    files.write_json_atomic(os.path.join(out_dir, "heldout.json"), files.to_json(result))
    files.atomic_write(os.path.join(out_dir, "heldout.md"), markdown(result))
    return result
