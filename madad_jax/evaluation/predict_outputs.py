"""What predict writes for one scan: the map in the scan's grid (NIfTI), the PNG panels and
overlay, the JSON summary, the HTML report and, with a calibration, the lesion mask and its
table; all renamed into place together or not at all."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any

import nibabel as nib
import numpy as np

from madad_jax.core import files
from madad_jax.data import nifti
from madad_jax.data.errors import BadInputError
from madad_jax.evaluation import figures


@dataclasses.dataclass
class Prediction:
    rows: list[dict[str, Any]]  # preprocess.subject_slices or grid_slices rows
    maps: np.ndarray  # (n, S, S) slice maps, 0 outside the slice brain mask
    samples: np.ndarray | None  # (n, S, S) healthy counterparts
    volume: np.ndarray  # the map in the input's own grid


def panel_slices(pred: Prediction, n: int) -> list[int]:
    """Row indices of up to `n` representative slices: the largest lesion (when known), the
    strongest map, then evenly spread brain slices."""
    count = len(pred.rows)
    picks = []
    if "segmentation" in pred.rows[0]:
        areas = [int(np.sum(r["segmentation"])) for r in pred.rows]
        if max(areas) > 0:
            picks.append(int(np.argmax(areas)))
    picks.append(int(np.argmax(pred.maps.reshape(count, -1).sum(1))))
    for q in np.linspace(0.2, 0.8, max(n, 2)):
        picks.append(int(round(q * (count - 1))))
    out = []
    for p in picks:
        if p not in out:
            out.append(p)
    return sorted(out[: max(1, n)])


def write_nifti(path: str, volume: np.ndarray, source_path: str, affine: np.ndarray,
                dtype: Any = np.float32) -> None:
    """NIfTI (float32 unless `dtype`) with the input's affine, shape (trailing singleton axes
    included) and qform / sform codes."""
    qcode = scode = 0
    try:
        src = nib.load(source_path).header
        shape = tuple(int(n) for n in src.get_data_shape())
        if shape != volume.shape and int(np.prod(shape)) == volume.size:
            volume = volume.reshape(shape)
        qcode = int(src["qform_code"]) if "qform_code" in src else 1
        scode = int(src["sform_code"]) if "sform_code" in src else 1
    except Exception:  # a non-NIfTI input format: keep nibabel's defaults
        pass
    img = nib.Nifti1Image(volume.astype(dtype), affine)
    if qcode or scode:
        img.set_qform(affine, code=qcode or scode)
        img.set_sform(affine, code=scode or qcode)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def voxel_scores(pred: Prediction, subject: nifti.Subject) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    brain = subject.image.to_native(subject.brainmask)
    gt = subject.image.to_native(subject.segmentation > 0)[brain]
    scores = pred.volume[brain]
    if not 0 < gt.sum() < gt.size:
        return {}
    return {"voxel_auroc": float(roc_auc_score(gt, scores)),
            "voxel_auprc": float(average_precision_score(gt, scores))}


def slice_title(row: dict[str, Any]) -> str:
    if "z_mm" in row:
        return f"z {row['z_mm']:.0f} mm"
    return f"slice {row['slice_index']}"


def write_outputs(
    out_dir: str, stem: str, subject: nifti.Subject, pred: Prediction, summary: dict[str, Any],
    num_panels: int = 4, lesion: tuple[np.ndarray, list, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Write the NIfTI map, PNG panels, overlay and JSON summary into `out_dir` atomically;
    with `lesion` = (mask, component rows, calibration) also the lesion mask and table."""
    names = {
        "anomaly": f"{stem}_anomaly.nii.gz",
        "panels": f"{stem}_panels.png",
        "overlay": f"{stem}_overlay.png",
        "summary": f"{stem}_predict.json",
        "report": f"{stem}_report.html",
        "viewer": f"{stem}_viewer.html",
    }
    if lesion is not None:
        names.update(lesions=f"{stem}_lesions.nii.gz", lesions_tsv=f"{stem}_lesions.tsv",
                     lesions_json=f"{stem}_lesions.json")
    created = not os.path.isdir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise files.named(err, out_dir) from err
    before = {k: os.path.lexists(os.path.join(out_dir, v)) for k, v in names.items()}
    try:
        # Every file is renamed into place only when all of them were written.
        with contextlib.ExitStack() as stack:
            tmp = {k: stack.enter_context(files.atomic_path(
                os.path.join(out_dir, name), suffix=".nii.gz" if name.endswith(".nii.gz")
                else ""))
                for k, name in names.items()}
            write_nifti(tmp["anomaly"], pred.volume, subject.image.path, subject.image.affine)
            if lesion is not None:
                from madad_jax.evaluation import lesions

                write_nifti(tmp["lesions"], lesion[0], subject.image.path, subject.image.affine,
                            dtype=np.uint8)
                lesions.write_table(tmp["lesions_tsv"], tmp["lesions_json"], lesion[1],
                                    extra={"scan": subject.image.path, **lesion[2]})
            sel = panel_slices(pred, num_panels)
            gt = None
            if subject.segmentation is not None:
                gt = np.stack([pred.rows[i]["segmentation"] for i in sel])
            figures.slice_panels(
                tmp["panels"],
                np.stack([pred.rows[i]["image"] for i in sel]),
                None if pred.samples is None else pred.samples[sel],
                pred.maps[sel],
                gt,
                titles=[slice_title(pred.rows[i]) for i in sel],
            )
            anomaly_img = nib.load(tmp["anomaly"])
            figures.overlay(tmp["overlay"], subject.image.path, anomaly_img, title=stem)
            figures.viewer(tmp["viewer"], subject.image.path, anomaly_img,
                           None if lesion is None else float(lesion[2]["threshold"]))
            del anomaly_img
            summary = dict(summary, panel_slices=[int(pred.rows[i]["slice_index"]) for i in sel])
            files.atomic_write(tmp["summary"], json.dumps(summary, indent=2, sort_keys=True))
            from madad_jax.evaluation import report

            report.scan_report(tmp["report"], stem, summary, None if lesion is None
                               else lesion[1], {"overlay": tmp["overlay"],
                                                "panels": tmp["panels"],
                                                "viewer_name": names["viewer"]})
    except BaseException:
        # A rename that failed after others succeeded: take the new files back out.
        for k, v in names.items():
            if not before[k]:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(out_dir, v))
        if created and not os.listdir(out_dir):
            os.rmdir(out_dir)
        raise
    return {k: os.path.join(out_dir, v) for k, v in names.items()}


def output_dir(config, workdir: str) -> str:
    out = config.predict.output or os.path.join(workdir, "predict")
    if os.path.exists(out) and not os.path.isdir(out):
        raise BadInputError(out, "predict.output exists and is not a directory")
    try:
        files.check_writable(out)
    except OSError as err:
        raise BadInputError(out, f"predict.output is not writable ({err.strerror})") from err
    return out
