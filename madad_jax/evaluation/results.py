"""What `evaluate` adds to `metrics.json` beyond the oracle figures: the calibrated
threshold's metrics, detection ("contains a lesion") AUROC / AP, bootstrap intervals, and
the model card.

- `calibrated` (`evaluation.calibration`): the threshold chosen on healthy val voxels, and
  Dice, precision, recall, FPR and per-volume Dice / TPR / FPR / HD95 / lesion detection at it;
- `detection`: a slice score and a volume score (the `evaluate.detection_quantile` quantile
  of the map inside the brain) ranked against "contains a lesion"; AUROC and AP need test
  units with and without lesion, otherwise they are null with a `note`;
- `intervals`: bootstrap 95 % intervals over subjects (`evaluation.bootstrap`) for the
  headline figures.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from madad_jax.core import files
from madad_jax.data import sources
from madad_jax.evaluation import bootstrap, calibration
from madad_jax.evaluation import volume_metrics as vm

SplitFn = Callable[[], Mapping[str, Any] | None]
MapsFn = Callable[[np.ndarray], np.ndarray]


def spacing_of(config) -> tuple[float, float, float] | None:
    """(slice, row, column) mm of the evaluation slices when the data set knows it (demo)."""
    if str(config.data.kind) != "demo":
        return None
    d = config.data.demo
    px = float(d.fov_mm) / int(config.image_size)
    return float(d.slice_mm), px, px


def _ranking(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    labels = np.asarray(labels, bool)
    out: dict[str, Any] = {"n": int(labels.size), "n_with_lesion": int(labels.sum())}
    if 0 < labels.sum() < labels.size:
        out.update(auroc=float(roc_auc_score(labels, scores)),
                   ap=float(average_precision_score(labels, scores)))
    else:
        out.update(auroc=None, ap=None,
                   note="needs units with and without lesion; this test split has "
                        + ("only lesioned" if labels.all() else "no lesioned") + " units")
    return out


def unit_score(m: np.ndarray, brain: np.ndarray, q: float) -> float:
    """The `q` quantile of the map inside the brain (0 for an empty brain)."""
    v = np.asarray(m)[np.asarray(brain) > 0]
    return float(np.quantile(v, q)) if v.size else 0.0


def _unit_scores(data: Mapping[str, Any], maps: np.ndarray,
                 q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(slice scores, slice has-lesion, volume scores, volume has-lesion) of one split."""
    n = len(maps)
    segs = data.get("segmentations")
    segs = np.zeros(maps.shape, bool) if segs is None else np.asarray(segs) > 0
    brains = np.asarray(data["brainmasks"]).reshape(maps.shape)
    vols = vm.volumes_from_eval(dict(data, segmentations=segs.astype(np.int32)), maps)
    return (np.array([unit_score(maps[i], brains[i], q) for i in range(n)]),
            segs.reshape(n, -1).any(1),
            np.array([unit_score(v.anomaly_map, v.brainmask, q) for v in vols]),
            np.array([v.lesion_voxels > 0 for v in vols]))


def detection(data: Mapping[str, Any], maps: np.ndarray, q: float,
              healthy: tuple[Mapping[str, Any], np.ndarray] | None = None) -> dict[str, Any]:
    """Slice- and volume-level "contains a lesion" AUROC and AP over the test units and,
    when given, the healthy test units `(split, maps)`."""
    parts = [_unit_scores(data, maps, q)]
    if healthy is not None:
        parts.append(_unit_scores(healthy[0], healthy[1], q))
    s, sl, v, vl = (np.concatenate([p[i] for p in parts]) for i in range(4))
    out = {"score": f"{q:g} quantile of the map inside the brain",
           "slice": _ranking(s, sl), "volume": _ranking(v, vl)}
    if healthy is not None:
        out["healthy_units"] = "the test_healthy split (subjects without lesions)"
    return out


def healthy_test_fpr(split: Mapping[str, Any], maps: np.ndarray,
                     threshold: float) -> dict[str, Any]:
    """The calibrated threshold on the healthy test units: the fraction of their brain voxels
    flagged (the FPR the calibration aimed at, on brains it never saw) and of units flagged."""
    brains = np.asarray(split["brainmasks"]).reshape(maps.shape) > 0
    flagged = (maps > threshold) & brains
    n = len(maps)
    return {"n_units": int(n), "brain_voxels": int(brains.sum()),
            "fpr": float(flagged.sum() / max(int(brains.sum()), 1)),
            "units_with_a_flag": float(flagged.reshape(n, -1).any(1).mean()) if n else None}


def extend(config, result: dict[str, Any], test: Mapping[str, Any], maps: np.ndarray,
           val_split: SplitFn, val_maps: Callable[[], np.ndarray], checkpoint: str,
           step: int | None, maps_fn: MapsFn | None = None) -> dict[str, Any]:
    """Add `calibrated`, `detection` and `intervals` to `result` (test maps with labels);
    `val_split` and `val_maps` give the val split and its maps, asked for only when the
    threshold is calibrated; `maps_fn` maps the healthy test units, when the data have
    them. Returns what `write` puts on disk."""
    e = config.evaluate
    extras: dict[str, Any] = {"calibration": None, "volume_rows": None}
    segs = test["segmentations"]
    healthy = None if maps_fn is None else sources.eval_slices(config, "test_healthy")
    if healthy is not None and len(healthy["images"]):
        healthy = (healthy, np.asarray(maps_fn(healthy["images"])).reshape(
            len(healthy["images"]), *maps.shape[1:]))
    else:
        healthy = None
    result["detection"] = detection(test, maps, float(e.detection_quantile), healthy)
    method = str(e.threshold)
    if method != "oracle":
        v = val_split()
        if v is None:
            print(f"warning: evaluate.threshold={method} needs a val split; no calibrated figures",
                  file=sys.stderr)
        else:
            s = config.sample
            rec = calibration.calibrate(
                method, val_maps(), v["brainmasks"], v.get("segmentations"),
                target_fpr=float(e.target_fpr), percentile=float(e.threshold_percentile),
                split="val", checkpoint=checkpoint, step=step,
                map_settings={"ddim_steps": int(s.ddim_steps), "eta": float(s.eta),
                              "flag_threshold": float(s.flag_threshold),
                              "sigma": float(s.sigma), "map_source": str(s.map_source),
                              "image_size": int(config.image_size)})
            cal, rows = calibration.calibrated_metrics(test, maps, rec, spacing_of(config))
            if healthy is not None:
                cal["healthy_test"] = healthy_test_fpr(*healthy, float(rec["threshold"]))
            cal["calibration"] = rec
            result["calibrated"] = cal
            extras.update(calibration=rec, volume_rows=rows)
    subjects = _subjects(test)
    b, pb, seed = int(e.bootstrap_resamples), int(e.bootstrap_pixel_resamples), int(
        config.sample.seed)
    if b > 0:
        iv = bootstrap.slice_intervals(maps, segs, subjects, b, pb, seed)
        if "calibrated" in result:
            per = extras["volume_rows"]
            cv = bootstrap.mean_intervals(per, ("dice", "tpr", "fpr", "hd95"), b, seed)
            iv["calibrated"] = {f"per_volume_{k}": x for k, x in cv.items()}
        result["intervals"] = iv
    return extras


def _subjects(test: Mapping[str, Any]) -> list[str]:
    subj = test.get("subjects")
    names = list(test["names"])
    if subj is None or len(subj) != len(names):
        return [vm.subject_of(str(n)) for n in names]
    return [str(s) for s in subj]


def write(out_dir: str, extras: Mapping[str, Any]) -> None:
    """`calibration.json` and `calibrated_volumes.csv` into the evaluate folder."""
    if extras.get("calibration"):
        calibration.save(out_dir, extras["calibration"])
    if extras.get("volume_rows"):
        vm.write_csv(os.path.join(out_dir, "calibrated_volumes.csv"), extras["volume_rows"])


# ------------------------------------------------------------------------- model card


def model_card(config, result: Mapping[str, Any], checkpoint: str,
               step: int | None) -> dict[str, Any]:
    """The model card's facts: data, geometry, calibration, headline metrics, command."""
    d = config.data
    data: dict[str, Any] = {"kind": str(d.kind), "modality": str(d.get("modality", "") or "")}
    if str(d.kind) == "demo":
        data.update(source="MNI152 T1 template (nilearn) under random deformations",
                    modality="T1", slice_mm=float(d.demo.slice_mm),
                    fov_mm=float(d.demo.fov_mm), z_mm=list(d.demo.z_mm))
    else:
        data.update(train_path=str(d.get("train_path", "")), png_root=str(d.get("png_root", "")))
    head = {k: result.get(k) for k in ("max_dice", "f1_max", "auroc", "ap")}
    cal = result.get("calibrated") or {}
    return {
        "model": str(config.model.name), "checkpoint": checkpoint, "step": step,
        "training_data": data, "image_size": int(config.image_size),
        "slicing": {"axis": "axial", "image_size": int(config.image_size)},
        "calibration": cal.get("calibration"),
        "headline_metrics": {"oracle": head,
                             "calibrated": {k: cal.get(k) for k in
                                            ("dice", "precision", "recall", "fpr")} if cal
                             else None,
                             "detection": result.get("detection")},
        "intervals": result.get("intervals"),
        "command": " ".join(shlex.quote(a) for a in ["python", "-m", "madad_jax.main",
                                                      *sys.argv[1:]]),
    }


def card_markdown(card: Mapping[str, Any]) -> str:
    """MODEL_CARD.md text for `card`."""
    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else ("-" if x is None else str(x))

    lines = [f"# Model card: madad-jax {card['model']}", "",
             f"- checkpoint: `{card['checkpoint']}` (step {card['step']})",
             f"- training data: {card['training_data']}",
             f"- image size: {card['image_size']}, slicing: {card['slicing']}", ""]
    cal = card.get("calibration")
    lines.append("## Calibration")
    if cal:
        lines += ["", f"threshold {fmt(cal['threshold'])} ({cal['method']}, on the "
                      f"{cal['split']} split's {cal['healthy_voxels']} healthy brain voxels; "
                      f"achieved FPR {fmt(cal['achieved_fpr'])}"
                      + (f", target {fmt(cal.get('target_fpr'))}" if 'target_fpr' in cal
                         else "") + ")", ""]
    else:
        lines += ["", "none: predict writes continuous maps only", ""]
    lines += ["## Headline metrics", "", "| figure | value |", "|---|---|"]
    for group, vals in card["headline_metrics"].items():
        if isinstance(vals, Mapping) and group != "detection":
            lines += [f"| {group} {k} | {fmt(v)} |" for k, v in vals.items()]
    lines += ["", "## Command", "", "```", card["command"], "```", ""]
    return "\n".join(lines)


def write_card(folder: str, card: Mapping[str, Any]) -> None:
    """`MODEL_CARD.md` and `model_card.json` into `folder`."""
    files.atomic_write(os.path.join(folder, "MODEL_CARD.md"), card_markdown(card))
    files.write_json_atomic(os.path.join(folder, "model_card.json"), files.to_json(dict(card)),
                            indent=2, sort_keys=False)


def save_beside_checkpoint(directory: str, extras: Mapping[str, Any],
                           card: Mapping[str, Any]) -> None:
    """The calibration and the model card into the checkpoint directory (a warning when it
    is not writable: the evaluate folder keeps its copies)."""
    try:
        if extras.get("calibration"):
            calibration.save(directory, extras["calibration"])
        write_card(directory, card)
    except OSError as err:
        print(f"warning: could not write the calibration / model card into {directory}: {err}",
              file=sys.stderr)
