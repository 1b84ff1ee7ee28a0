"""Predict mode: the anomaly map of one NIfTI scan, in the scan's own voxel grid.

    python -m madad_jax.main --config=configs/NAME.py --workdir=DIR --config.mode=predict \
        --config.checkpoint=CKPT_DIR --config.predict.input=SCAN.nii.gz \
        [--config.predict.brainmask=MASK.nii.gz] [--config.predict.segmentation=SEG.nii.gz] \
        --config.predict.output=OUT_DIR

Steps: load and check the scan (and masks) in RAS+ order; read what the model was trained
on (`madad_jax.evaluation.domain`: the run config stored with the checkpoint, else this run's,
and the training data's manifest); slice the scan as the training data were, every slice that
holds brain; run the jitted mask-guided DDIM on them in batches; map the results back into the
input's grid, 0 outside the brain.

Two slicing geometries (`predict.geometry`; `auto` picks `mni_grid` for a demo checkpoint,
else the manifest's `fit`, else `pad`):
- `pad` / `brain`: as the NIfTI converter (`preprocess.subject_slices`): normalize, slice along
  `predict.axis`, rotate, crop to the brain's bounding box (`brain`), pad to a square and
  resize to image_size; maps go back through the recorded geometry.
- `mni_grid`: for models trained on slices of a fixed MNI-space grid (`data.kind=demo`): the
  scan is resampled through its affine (blurred first along axes finer than the training
  spacing) onto the training grid, `data.demo.fov_mm` square at fov_mm / image_size mm per
  pixel, axial slices at the training z positions (`data.demo.z_mm`, `slice_mm`), subdivided
  for finer scans and extended over the scan's whole brain; normalized as the training
  volumes were; maps go back by trilinear interpolation at every brain voxel's position.

Where the scan departs from the training data (voxel size, brain outside the field of view,
brain slices outside the trained z range or slice selection, not MNI-registered, settings
that differ from the manifest's), a `warning: ...` line goes to stderr for each problem and
the summary lists them; out-of-range slices are still scored.

Writes into OUT_DIR (default `DIR/predict`):
- `<stem>_anomaly.nii.gz`: float32, the input's shape and affine (qform/sform codes kept);
- `<stem>_panels.png`: input | healthy counterpart | map | ground truth, a few slices;
- `<stem>_overlay.png`: the map over the scan (nilearn, three orthogonal cuts at its peak);
- `<stem>_predict.json`: checkpoint, training domain, geometry and preprocessing, slices,
  `warnings` and `slices_outside_training`, and with a ground truth the voxel AUROC / AUPRC
  inside the brain.
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

from madad_jax.core import files
from madad_jax.core.errors import InputError
from madad_jax.data import nifti, preprocess
from madad_jax.data.errors import BadInputError
from madad_jax.evaluation import domain, figures
from madad_jax.models.arch import apply_arch
from madad_jax.sampling import inferencer, loading

log = logging.getLogger("madad_jax.evaluation.predict")

MapsFn = Callable[[np.ndarray], dict[str, np.ndarray]]
GEOMETRIES = ("auto", "pad", "brain", "mni_grid")


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


def slice_options(
    config, settings: dict[str, Any] | None = None, fit: str | None = None
) -> preprocess.SliceOptions:
    """The preprocessing of the training slices; every slice that holds brain is kept.
    `fit` ("pad" | "brain") overrides the recorded one."""
    s = settings or {}
    defaults = preprocess.SliceOptions()
    return preprocess.SliceOptions(
        image_size=int(config.image_size),
        axis=int(config.predict.axis),
        policy="all",
        percentiles=tuple(float(p) for p in s.get("percentiles", defaults.percentiles)),
        min_brain_fraction=0.0,
        fit=fit or str(s.get("fit", defaults.fit)),
        margin=int(s.get("margin", defaults.margin)),
    )


def resolve_geometry(requested: str, dom: domain.TrainingDomain) -> str:
    """`predict.geometry`, with `auto` made concrete: `mni_grid` for a model trained on an
    MNI-space grid (demo), else the fit recorded in its training manifest, else `pad`."""
    if requested not in GEOMETRIES:
        raise InputError(f"predict.geometry must be one of {GEOMETRIES}, got {requested!r}")
    if requested != "auto":
        return requested
    if dom.mni and dom.has_grid:
        return "mni_grid"
    fit = str(dom.settings.get("fit", "pad"))
    return fit if fit in ("pad", "brain") else "pad"


@dataclasses.dataclass
class Prediction:
    rows: list[dict[str, Any]]  # preprocess.subject_slices or grid_slices rows
    maps: np.ndarray  # (n, S, S) slice maps, 0 outside the slice brain mask
    samples: np.ndarray | None  # (n, S, S) healthy counterparts
    volume: np.ndarray  # the map in the input's own grid


def slice_subject(
    subject: nifti.Subject, opts: preprocess.SliceOptions,
    slicing: preprocess.GridSlicing | None = None,
) -> list[dict[str, Any]]:
    """The slices the model is run on: on `slicing`'s world grid when given (with
    `opts.percentiles`), else as `preprocess.subject_slices` cuts them."""
    if slicing is not None:
        rows = preprocess.grid_slices(subject, slicing, opts.percentiles)
        where = "on the model's MNI grid"
    else:
        rows = preprocess.subject_slices(subject, opts)
        where = "along predict.axis"
    if not rows:
        raise BadInputError(subject.brainmask_path or subject.image.path,
                            f"no slice holds brain {where}")
    return rows


def predict_rows(
    subject: nifti.Subject, rows: list[dict[str, Any]], maps_fn: MapsFn,
    slicing: preprocess.GridSlicing | None = None,
) -> Prediction:
    """Run `maps_fn` on the rows' (n,S,S,1) images and map the result back to the input
    grid (through `slicing`'s grid when the rows were cut on it)."""
    images = np.stack([r["image"] for r in rows])[..., None]
    out = maps_fn(images)
    masks = np.stack([r["brainmask"] for r in rows]).astype(np.float32)
    maps = np.asarray(out["anomaly_map"], np.float32) * masks
    samples = out.get("sample")
    samples = None if samples is None else np.asarray(samples, np.float32)[..., 0]
    indices = [r["slice_index"] for r in rows]
    if slicing is not None:
        volume = preprocess.grid_to_volume(maps, masks, indices, slicing.grid, subject.image,
                                           subject.brainmask)
    else:
        volume = preprocess.slices_to_volume(maps, indices, rows[0]["geometry"], order=1)
    volume[~subject.image.to_native(subject.brainmask)] = 0.0
    return Prediction(rows, maps, samples, np.maximum(volume, 0.0).astype(np.float32))


def predict_subject(
    subject: nifti.Subject, opts: preprocess.SliceOptions, maps_fn: MapsFn,
    slicing: preprocess.GridSlicing | None = None,
) -> Prediction:
    """Slice, run `maps_fn` on (n,S,S,1) images, and map the result back to the input grid."""
    return predict_rows(subject, slice_subject(subject, opts, slicing), maps_fn, slicing)


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


def _slice_title(row: dict[str, Any]) -> str:
    if "z_mm" in row:
        return f"z {row['z_mm']:.0f} mm"
    return f"slice {row['slice_index']}"


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
                titles=[_slice_title(pred.rows[i]) for i in sel],
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


def training_domain(config, stored: dict[str, Any] | None) -> domain.TrainingDomain:
    """The training domain of the checkpoint: its stored run config, else this run's
    (`config`, with the checkpoint's architecture applied), and the manifest's settings."""
    settings = training_settings(config, stored)
    if stored:
        return domain.training_domain(stored, int(config.image_size), settings, "checkpoint",
                                      fallback=config)
    return domain.training_domain(config, int(config.image_size), settings, "run config")


def warn(lines: list[str]) -> None:
    """Each out-of-distribution problem as a `warning:` line on stderr."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
        log.debug("warning: %s", line)


def run(config, workdir: str) -> dict[str, str]:
    """Predict `config.predict.input`; returns the written files by kind."""
    p = config.predict
    if not p.input:
        raise InputError("predict mode needs --config.predict.input=SCAN.nii.gz")
    out_dir = _output_dir(config, workdir)
    stem = scan_stem(p.input)
    subject = nifti.load_subject(stem, p.input, p.brainmask or None, p.segmentation or None)

    restored = loading.restore_for_run(config, workdir)
    run_config = copy.deepcopy(config)
    apply_arch(run_config, restored.arch)
    dom = training_domain(run_config, restored.config)
    geometry = resolve_geometry(str(p.geometry), dom)
    if geometry == "mni_grid" and not dom.has_grid:
        raise BadInputError(restored.directory, "predict.geometry=mni_grid needs data.demo "
                                                "(fov_mm, z_mm, slice_mm) in the run config")
    opts = slice_options(run_config, dom.settings,
                         fit=geometry if geometry in ("pad", "brain") else None)
    slicing = points = None
    if geometry == "mni_grid":
        points = domain.brain_points(subject)
        slicing = domain.input_slicing(dom, subject, points)
    warnings = domain.check_volume(subject, dom, points, opts, geometry)
    warn(warnings)
    rows = slice_subject(subject, opts, slicing)
    slice_warnings, outside = domain.check_slices(rows, dom, subject, opts)
    warn(slice_warnings)
    warnings += slice_warnings

    models = loading.build_models(run_config)
    key = jax.random.PRNGKey(int(run_config.sample.seed))

    def maps_fn(images: np.ndarray) -> dict[str, np.ndarray]:
        return inferencer.anomaly_maps(run_config, models, restored.params, images, key,
                                     keys=("anomaly_map", "sample"),
                                     progress=sys.stderr.isatty())

    pred = predict_rows(subject, rows, maps_fn, slicing)
    preprocessing = opts.to_dict()
    if slicing is not None:
        preprocessing = {"image_size": opts.image_size, "axis": 2, "fit": "mni_grid",
                         "percentiles": list(opts.percentiles), **slicing.to_dict()}
    summary = {
        "input": os.path.abspath(p.input),
        "brainmask": os.path.abspath(p.brainmask) if p.brainmask else "nonzero voxels",
        "segmentation": os.path.abspath(p.segmentation) if p.segmentation else "",
        "checkpoint": restored.directory,
        "step": restored.step,
        "training_domain": dom.to_dict(),
        "geometry": geometry,
        "preprocessing": preprocessing,
        "sample": run_config.sample.to_dict(),
        "num_slices": len(pred.rows),
        "map_max": float(pred.volume.max()),
        "warnings": warnings,
        "slices_outside_training": outside,
    }
    if subject.segmentation is not None:
        summary.update(_scores(pred, subject))
    paths = write_outputs(out_dir, stem, subject, pred, summary, int(p.num_panels))
    log.info("wrote %s", ", ".join(paths.values()))
    print(f"wrote {paths['anomaly']}")
    return paths
