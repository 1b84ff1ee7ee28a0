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

import copy
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from madad_jax.core.errors import InputError
from madad_jax.data import nifti, preprocess
from madad_jax.data.errors import BadInputError
from madad_jax.evaluation import domain
from madad_jax.evaluation import predict_outputs as outputs
from madad_jax.evaluation.predict_outputs import Prediction, write_outputs
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


def smooth_across_slices(maps: np.ndarray, masks: np.ndarray, indices: list[int],
                         sigma: float) -> np.ndarray:
    """Gaussian smoothing (sigma in slices) of the (n,H,W) maps along the slice axis, over
    brain pixels only: each slice is mapped on its own, so a volume shows stripes across
    slices; this averages neighbours. Rows are placed by `indices` (gaps stay empty)."""
    from scipy import ndimage as ndi

    idx = np.asarray(indices) - min(indices)
    vol = np.zeros((int(idx.max()) + 1, *maps.shape[1:]), np.float64)
    wts = np.zeros_like(vol)
    vol[idx], wts[idx] = maps * masks, masks
    num = ndi.gaussian_filter1d(vol, sigma, axis=0, mode="constant")
    den = ndi.gaussian_filter1d(wts, sigma, axis=0, mode="constant")
    return (np.where(masks > 0, num[idx] / np.maximum(den[idx], 1e-6), 0.0)).astype(np.float32)


def slice_sigma(z_sigma_mm: float, subject: nifti.Subject, axis: int,
                slicing: preprocess.GridSlicing | None) -> float:
    """`predict.z_sigma_mm` in slices of the geometry used."""
    if z_sigma_mm <= 0:
        return 0.0
    if slicing is not None:
        step = float(slicing.grid.step_mm)
    else:
        step = float(preprocess.voxel_sizes(preprocess.canonical_affine(subject.image))[axis])
    return float(z_sigma_mm) / max(step, 1e-6)


def predict_rows(
    subject: nifti.Subject, rows: list[dict[str, Any]], maps_fn: MapsFn,
    slicing: preprocess.GridSlicing | None = None, across_slices: float = 0.0,
) -> Prediction:
    """Run `maps_fn` on the rows' (n,S,S,1) images and map the result back to the input
    grid (through `slicing`'s grid when the rows were cut on it); `across_slices`: see
    `smooth_across_slices`."""
    images = np.stack([r["image"] for r in rows])[..., None]
    out = maps_fn(images)
    masks = np.stack([r["brainmask"] for r in rows]).astype(np.float32)
    maps = np.asarray(out["anomaly_map"], np.float32) * masks
    if across_slices > 0:
        maps = smooth_across_slices(maps, masks, [r["slice_index"] for r in rows], across_slices)
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


@dataclasses.dataclass
class Model:
    """What every scan of a run shares: the restored checkpoint, its config and domain, the
    built models and the lesion threshold (None: continuous maps only)."""

    restored: Any
    config: Any
    domain: domain.TrainingDomain
    models: Any
    calibration: dict[str, Any] | None
    calibration_path: str | None


def load_model(config, workdir: str) -> Model:
    """Restore the checkpoint once and find its calibration (`predict.calibration`, else the
    checkpoint directory's `calibration.json`, else `DIR/evaluate/`'s)."""
    from madad_jax.evaluation import calibration

    restored = loading.restore_for_run(config, workdir)
    run_config = copy.deepcopy(config)
    apply_arch(run_config, restored.arch)
    dom = training_domain(run_config, restored.config)
    given = str(config.predict.get("calibration", "") or "")
    if given and not os.path.exists(given):
        raise BadInputError(given, "predict.calibration: no such file")
    path = calibration.find([given, restored.directory, os.path.join(workdir, "evaluate")])
    rec = None
    if path is not None:
        try:
            rec = calibration.load(path)
        except ValueError as err:
            raise BadInputError(path, str(err).split(": ", 1)[-1]) from err
    else:
        print("warning: predict: no calibration.json beside the checkpoint (run evaluate with "
              "evaluate.threshold=healthy_fpr): writing the continuous map only",
              file=sys.stderr)
    return Model(restored, run_config, dom, loading.build_models(run_config), rec, path)


def lesion_mask(volume: np.ndarray, brain: np.ndarray, record: dict[str, Any],
                min_voxels: int = 0) -> np.ndarray:
    """The binary lesion mask: map > the calibrated threshold inside the brain, without
    components smaller than `min_voxels`."""
    from madad_jax.evaluation import lesions

    return lesions.remove_small((volume > float(record["threshold"])) & brain, int(min_voxels))


def _lesions(model: Model, pred: Prediction, subject: nifti.Subject,
             min_voxels: int) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """(mask, component rows, the summary's `lesions` entry) at the model's calibration."""
    from madad_jax.evaluation import lesions

    brain = subject.image.to_native(subject.brainmask)
    mask = lesion_mask(pred.volume, brain, model.calibration, min_voxels)
    table = lesions.components(mask, pred.volume, subject.image.affine)
    cal = {k: model.calibration.get(k) for k in
           ("threshold", "method", "target_fpr", "achieved_fpr", "split", "step")}
    return mask, table, {"calibration": model.calibration_path, **cal,
                         "num_lesions": len(table),
                         "total_volume_ml": float(sum(r["volume_ml"] for r in table))}


def run(config, workdir: str, model: Model | None = None,
        scan: tuple[str, str, str] | None = None, out_dir: str | None = None) -> dict[str, str]:
    """Predict `config.predict.input` (or `scan` = (input, brainmask, segmentation) with a
    `model` loaded once); returns the written files by kind."""
    p = config.predict
    if not p.input and scan is None:
        raise InputError("predict mode needs --config.predict.input=SCAN.nii.gz")
    out_dir = out_dir or outputs.output_dir(config, workdir)
    path, mask_path, seg_path = scan or (p.input, p.brainmask, p.segmentation)
    stem = scan_stem(path)
    subject = nifti.load_subject(stem, path, mask_path or None, seg_path or None)

    model = model or load_model(config, workdir)
    restored, run_config, dom = model.restored, model.config, model.domain
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

    models = model.models
    key = jax.random.PRNGKey(int(run_config.sample.seed))

    def maps_fn(images: np.ndarray) -> dict[str, np.ndarray]:
        return inferencer.anomaly_maps(run_config, models, restored.params, images, key,
                                     keys=("anomaly_map", "sample"),
                                     progress=sys.stderr.isatty())

    sigma = slice_sigma(float(p.z_sigma_mm), subject, int(p.axis), slicing)
    pred = predict_rows(subject, rows, maps_fn, slicing, across_slices=sigma)
    preprocessing = opts.to_dict()
    if slicing is not None:
        preprocessing = {"image_size": opts.image_size, "axis": 2, "fit": "mni_grid",
                         "percentiles": list(opts.percentiles), **slicing.to_dict()}
    summary = {
        "input": os.path.abspath(path),
        "brainmask": os.path.abspath(mask_path) if mask_path else "nonzero voxels",
        "segmentation": os.path.abspath(seg_path) if seg_path else "",
        "checkpoint": restored.directory,
        "step": restored.step,
        "training_domain": dom.to_dict(),
        "geometry": geometry,
        "preprocessing": preprocessing,
        "sample": run_config.sample.to_dict(),
        "num_slices": len(pred.rows),
        "z_sigma_mm": float(p.z_sigma_mm),
        "map_max": float(pred.volume.max()),
        "warnings": warnings,
        "slices_outside_training": outside,
    }
    if subject.segmentation is not None:
        summary.update(outputs.voxel_scores(pred, subject))
    lesion = None
    if model.calibration is not None:
        lesion = _lesions(model, pred, subject, int(p.min_lesion_voxels))
        summary["lesions"] = lesion[2]
    paths = write_outputs(out_dir, stem, subject, pred, summary, int(p.num_panels), lesion)
    log.info("wrote %s", ", ".join(paths.values()))
    print(f"wrote {paths['anomaly']}")
    return paths
