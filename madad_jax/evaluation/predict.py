"""Predict mode: the anomaly map of one NIfTI scan, in the scan's own voxel grid.

    python -m madad_jax.main --config=configs/NAME.py --workdir=DIR --config.mode=predict \
        --config.checkpoint=CKPT_DIR --config.predict.input=SCAN.nii.gz \
        [--config.predict.brainmask=MASK.nii.gz] [--config.predict.segmentation=SEG.nii.gz] \
        --config.predict.output=OUT_DIR

Steps: load and check the scan (and masks) in RAS+ order; normalize and slice it as the
training data were (`madad_jax.data.preprocess`, with the settings recorded in the training
data's manifest when it can be found, else the converter's defaults), every slice that holds
brain; run the jitted mask-guided DDIM on them in batches; put the maps back through the
recorded geometry (resize, pad, crop, rotation, reorientation) into the input's grid, 0
outside the brain.

Writes into OUT_DIR (default `DIR/predict`):
- `<stem>_anomaly.nii.gz`: float32, the input's shape and affine (qform/sform codes kept);
- `<stem>_panels.png`: input | healthy counterpart | map | ground truth, a few slices;
- `<stem>_overlay.png`: the map over the scan (nilearn, three orthogonal cuts at its peak);
- `<stem>_predict.json`: checkpoint, preprocessing, slices, and with a ground truth the
  voxel AUROC / AUPRC inside the brain.
Nothing is written unless every step succeeds: outputs are made in a temporary folder and
renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import nibabel as nib
import numpy as np

from madad_jax.core import checkpoint as ckpt
from madad_jax.core import files
from madad_jax.data import nifti, preprocess
from madad_jax.data.errors import BadInputError
from madad_jax.evaluation import figures
from madad_jax.sampling import inferencer, loading

log = logging.getLogger("madad_jax.evaluation.predict")

MapsFn = Callable[[np.ndarray], dict[str, np.ndarray]]


def scan_stem(path: str) -> str:
    """`/a/sub-01_T1w.nii.gz` -> `sub-01_T1w`."""
    name = os.path.basename(os.fspath(path).rstrip(os.sep))
    for ext in (".nii.gz", ".nii", ".gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def training_settings(*configs: Any) -> dict[str, Any]:
    """The slicing settings recorded in the manifest of the first config's training data."""
    from madad_jax.data import records

    for cfg in configs:
        if not cfg:
            continue
        data = cfg.get("data") or {}
        path = data.get("train_path", "") if hasattr(data, "get") else ""
        if not path:
            continue
        try:
            _, manifest = records.resolve_shards(path, "train")
        except (BadInputError, OSError, ValueError):
            continue
        if manifest and manifest.get("settings"):
            return dict(manifest["settings"])
    return {}


def slice_options(config, settings: dict[str, Any] | None = None) -> preprocess.SliceOptions:
    """The preprocessing of the training slices; every slice that holds brain is kept."""
    s = settings or {}
    axis = int(config.predict.axis)
    if "axis" in s and int(s["axis"]) != axis:
        log.warning("the training data were sliced along axis %s, predict.axis is %s",
                    s["axis"], axis)
    defaults = preprocess.SliceOptions()
    return preprocess.SliceOptions(
        image_size=int(config.image_size),
        axis=axis,
        policy="all",
        percentiles=tuple(float(p) for p in s.get("percentiles", defaults.percentiles)),
        min_brain_fraction=0.0,
        fit=str(s.get("fit", defaults.fit)),
        margin=int(s.get("margin", defaults.margin)),
    )


@dataclasses.dataclass
class Prediction:
    rows: list[dict[str, Any]]  # preprocess.subject_slices rows
    maps: np.ndarray  # (n, S, S) slice maps, 0 outside the slice brain mask
    samples: np.ndarray | None  # (n, S, S) healthy counterparts
    volume: np.ndarray  # the map in the input's own grid


def predict_subject(
    subject: nifti.Subject, opts: preprocess.SliceOptions, maps_fn: MapsFn
) -> Prediction:
    """Slice, run `maps_fn` on (n,S,S,1) images, and map the result back to the input grid."""
    rows = preprocess.subject_slices(subject, opts)
    if not rows:
        raise BadInputError(subject.brainmask_path or subject.image.path,
                            "no slice holds brain along predict.axis")
    images = np.stack([r["image"] for r in rows])[..., None]
    out = maps_fn(images)
    masks = np.stack([r["brainmask"] for r in rows]).astype(np.float32)
    maps = np.asarray(out["anomaly_map"], np.float32) * masks
    samples = out.get("sample")
    samples = None if samples is None else np.asarray(samples, np.float32)[..., 0]
    volume = preprocess.slices_to_volume(
        maps, [r["slice_index"] for r in rows], rows[0]["geometry"], order=1
    )
    volume[~subject.image.to_native(subject.brainmask)] = 0.0
    return Prediction(rows, maps, samples, np.maximum(volume, 0.0).astype(np.float32))


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


def write_nifti(path: str, volume: np.ndarray, source_path: str, affine: np.ndarray) -> None:
    """float32 NIfTI with the input's affine, shape (trailing singleton axes included) and
    qform / sform codes."""
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
    img = nib.Nifti1Image(volume.astype(np.float32), affine)
    if qcode or scode:
        img.set_qform(affine, code=qcode or scode)
        img.set_sform(affine, code=scode or qcode)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def _scores(pred: Prediction, subject: nifti.Subject) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    brain = subject.image.to_native(subject.brainmask)
    gt = subject.image.to_native(subject.segmentation > 0)[brain]
    scores = pred.volume[brain]
    if not 0 < gt.sum() < gt.size:
        return {}
    return {"voxel_auroc": float(roc_auc_score(gt, scores)),
            "voxel_auprc": float(average_precision_score(gt, scores))}


def write_outputs(
    out_dir: str, stem: str, subject: nifti.Subject, pred: Prediction, summary: dict[str, Any],
    num_panels: int = 4,
) -> dict[str, str]:
    """Write the NIfTI map, PNG panels, overlay and JSON summary into `out_dir` atomically."""
    names = {
        "anomaly": f"{stem}_anomaly.nii.gz",
        "panels": f"{stem}_panels.png",
        "overlay": f"{stem}_overlay.png",
        "summary": f"{stem}_predict.json",
    }
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
                os.path.join(out_dir, name), suffix=".nii.gz" if k == "anomaly" else ""))
                for k, name in names.items()}
            write_nifti(tmp["anomaly"], pred.volume, subject.image.path, subject.image.affine)
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
                titles=[f"slice {pred.rows[i]['slice_index']}" for i in sel],
            )
            anomaly_img = nib.load(tmp["anomaly"])
            figures.overlay(tmp["overlay"], subject.image.path, anomaly_img, title=stem)
            del anomaly_img
            summary = dict(summary, panel_slices=[int(pred.rows[i]["slice_index"]) for i in sel])
            files.atomic_write(tmp["summary"], json.dumps(summary, indent=2, sort_keys=True))
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


def _output_dir(config, workdir: str) -> str:
    out = config.predict.output or os.path.join(workdir, "predict")
    if os.path.exists(out) and not os.path.isdir(out):
        raise BadInputError(out, "predict.output exists and is not a directory")
    try:
        files.check_writable(out)
    except OSError as err:
        raise BadInputError(out, f"predict.output is not writable ({err.strerror})") from err
    return out


def run(config, workdir: str) -> dict[str, str]:
    """Predict `config.predict.input`; returns the written files by kind."""
    p = config.predict
    if not p.input:
        raise ValueError("predict mode needs --config.predict.input=SCAN.nii.gz")
    out_dir = _output_dir(config, workdir)
    stem = scan_stem(p.input)
    subject = nifti.load_subject(stem, p.input, p.brainmask or None, p.segmentation or None)

    restored = loading.restore_for_run(config, workdir)
    run_config = copy.deepcopy(config)
    ckpt.apply_arch(run_config, restored.arch)
    opts = slice_options(run_config, training_settings(run_config, restored.config))
    models = loading.build_models(run_config)
    key = jax.random.PRNGKey(int(run_config.sample.seed))

    def maps_fn(images: np.ndarray) -> dict[str, np.ndarray]:
        return inferencer.anomaly_maps(run_config, models, restored.params, images, key,
                                     keys=("anomaly_map", "sample"),
                                     progress=sys.stderr.isatty())

    pred = predict_subject(subject, opts, maps_fn)
    summary = {
        "input": os.path.abspath(p.input),
        "brainmask": os.path.abspath(p.brainmask) if p.brainmask else "nonzero voxels",
        "segmentation": os.path.abspath(p.segmentation) if p.segmentation else "",
        "checkpoint": restored.directory,
        "step": restored.step,
        "preprocessing": opts.to_dict(),
        "sample": run_config.sample.to_dict(),
        "num_slices": len(pred.rows),
        "map_max": float(pred.volume.max()),
    }
    if subject.segmentation is not None:
        summary.update(_scores(pred, subject))
    paths = write_outputs(out_dir, stem, subject, pred, summary, int(p.num_panels))
    log.info("wrote %s", ", ".join(paths.values()))
    print(f"wrote {paths['anomaly']}")
    return paths
