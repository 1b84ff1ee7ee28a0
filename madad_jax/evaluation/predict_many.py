"""Predict on a file, a folder or a glob of NIfTI scans: the model is loaded and compiled
once, every scan follows; a bad scan is reported in one line and skipped.

`predict.input` may be:
- a file: as `evaluation.predict.run` (one scan);
- a folder: every `*.nii` / `*.nii.gz` under it, at any depth (a BIDS-like tree works);
- a glob (`data/sub-*/anat/*_T1w.nii.gz`).

Files whose stem ends in `_brainmask`, `_mask`, `_seg`, `_segmentation`, `_anomaly` or
`_lesions` are not scans: `<stem>_brainmask.nii.gz` (or `_mask`) beside a scan is its brain
mask, `<stem>_seg.nii.gz` (or `_segmentation`) its ground truth.

With `predict.layout=flat` every scan's files land in `OUT/` as `<stem>_*`
(`evaluation.predict`); `OUT/group.tsv` and `group.json` list each scan, its status
(`ok` | `error`) and its figures, and `OUT/predict_args.json` holds the run's arguments.
With `predict.layout=bids` the outputs form a BIDS-derivatives folder
(`evaluation.bids`).
"""

from __future__ import annotations

import csv
import glob
import io
import os
import sys
from typing import Any

from madad_jax.core import files
from madad_jax.data.errors import BadInputError
from madad_jax.evaluation import bids, predict, predict_outputs

NOT_SCANS = ("_brainmask", "_mask", "_seg", "_segmentation", "_anomaly", "_lesions")
GROUP_COLUMNS = ("scan", "status", "num_slices", "map_max", "num_lesions", "total_volume_ml",
                 "warnings", "error")


def _is_nifti(path: str) -> bool:
    return path.lower().endswith((".nii", ".nii.gz"))


def scans(spec: str) -> list[str]:
    """The scans `spec` names (file, folder or glob), sorted; BadInputError when none."""
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        found = glob.glob(os.path.join(spec, "**", "*.nii*"), recursive=True)
    else:
        found = glob.glob(spec, recursive=True)
    out = sorted(p for p in found if os.path.isfile(p) and _is_nifti(p)
                 and not predict.scan_stem(p).endswith(NOT_SCANS)
                 and "desc-madad" not in os.path.basename(p))
    if not out:
        raise BadInputError(spec, "predict.input names no NIfTI scan (file, folder or glob)")
    return out


def _beside(path: str, suffixes: tuple[str, ...]) -> str:
    folder, stem = os.path.dirname(path), predict.scan_stem(path)
    for suf in suffixes:
        for ext in (".nii.gz", ".nii"):
            cand = os.path.join(folder, f"{stem}{suf}{ext}")
            if os.path.isfile(cand):
                return cand
    return ""


def is_many(spec: str) -> bool:
    """True when `predict.input` is a folder or a glob rather than one file."""
    return os.path.isdir(spec) or (not os.path.isfile(spec) and glob.has_magic(spec))


def group_tsv(rows: list[dict[str, Any]]) -> str:
    """The group table as TSV text."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(GROUP_COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in GROUP_COLUMNS])
    return buf.getvalue()


def _progress(i: int, n: int, name: str) -> None:
    width = 24
    done = int(width * i / n)
    print(f"\rpredict [{'#' * done}{'.' * (width - done)}] {i}/{n} {name[:40]:<40}",
          end="" if i < n else "\n", file=sys.stderr, flush=True)


def run(config, workdir: str) -> dict[str, Any]:
    """Predict every scan of `predict.input`; returns {scan: paths} for the good ones."""
    p = config.predict
    layout = str(p.get("layout", "flat"))
    spec = str(p.input)
    if not is_many(spec) and layout == "flat":
        return predict.run(config, workdir)
    paths = scans(spec)
    out_dir = predict_outputs.output_dir(config, workdir)
    os.makedirs(out_dir, exist_ok=True)
    model = predict.load_model(config, workdir)
    if layout == "bids":
        bids.write_dataset_description(out_dir, model)
    rows, written = [], {}
    tty = sys.stderr.isatty()
    for i, path in enumerate(paths):
        if tty:
            _progress(i, len(paths), os.path.basename(path))
        one = len(paths) == 1
        mask = p.brainmask if one and p.brainmask else _beside(path, ("_brainmask", "_mask"))
        seg = p.segmentation if one and p.segmentation else _beside(
            path, ("_seg", "_segmentation"))
        target = bids.scan_dir(out_dir, path, spec) if layout == "bids" else out_dir
        row: dict[str, Any] = {"scan": path}
        try:
            got = predict.run(config, workdir, model, (path, mask, seg), target)
        except (BadInputError, OSError, ValueError) as err:
            msg = str(err) if isinstance(err, BadInputError) else f"{path}: {err}"
            print(f"\nerror: {msg} (skipped)" if tty else f"error: {msg} (skipped)",
                  file=sys.stderr, flush=True)
            rows.append({**row, "status": "error", "error": msg})
            continue
        if layout == "bids":
            got = bids.rename(got, target, path, model)
        written[path] = got
        rows.append({**row, "status": "ok", **_figures(got)})
    if tty:
        _progress(len(paths), len(paths), "")
    files.atomic_write(os.path.join(out_dir, "group.tsv"), group_tsv(rows))
    from madad_jax.evaluation import report

    report.group_report(os.path.join(out_dir, "group_report.html"), rows, GROUP_COLUMNS)
    files.write_json_atomic(os.path.join(out_dir, "group.json"),
                            files.to_json({"scans": rows}), indent=2, sort_keys=False)
    files.write_json_atomic(os.path.join(out_dir, "predict_args.json"), files.to_json(
        {"argv": sys.argv, "workdir": workdir, "predict": p.to_dict(),
         "checkpoint": model.restored.directory, "step": model.restored.step,
         "calibration": model.calibration_path}), indent=2)
    ok = sum(r["status"] == "ok" for r in rows)
    print(f"predict: {ok} of {len(rows)} scans written to {out_dir} (group.tsv)")
    if ok == 0:
        raise BadInputError(spec, "no scan could be predicted")
    return written


def _figures(paths: dict[str, str]) -> dict[str, Any]:
    import json

    try:
        with open(paths["summary"]) as f:
            s = json.load(f)
    except (OSError, ValueError, KeyError):
        return {}
    les = s.get("lesions") or {}
    return {"num_slices": s.get("num_slices"), "map_max": s.get("map_max"),
            "num_lesions": les.get("num_lesions"), "total_volume_ml": les.get("total_volume_ml"),
            "warnings": len(s.get("warnings", []))}
