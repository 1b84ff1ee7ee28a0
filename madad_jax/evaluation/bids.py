"""`predict.layout=bids`: predict's outputs as a BIDS-derivatives folder.

    OUT/dataset_description.json                 DatasetType "derivative", GeneratedBy
    OUT/sub-<label>/[ses-<label>/]anat/
        <entities>_desc-madad_mask.nii.gz + .json   the binary lesion mask and its sidecar
                                                  (Type, RawSources, threshold, method)
        <entities>_desc-madad_probseg.nii.gz + .json the continuous anomaly map
        <entities>_desc-madad_lesions.tsv           one row per lesion
    OUT/sub-<label>/figures/                     panels, overlay, the predict summary

`<entities>` are the scan's own BIDS entities without its suffix (`sub-01_ses-1_T1w` ->
`sub-01_ses-1`); a scan named otherwise becomes `sub-<its stem, alphanumerics only>`.
"""

from __future__ import annotations

import os
import re
from typing import Any

from madad_jax.core import files

DESC = "madad"
_ENTITY = re.compile(r"^[a-zA-Z]+-[a-zA-Z0-9]+$")


def entities(stem: str) -> list[str]:
    """The `key-value` entities of a BIDS stem (its suffix dropped), `sub` first."""
    parts = stem.split("_")
    ents = [p for p in parts if _ENTITY.match(p)]
    if not ents or not ents[0].startswith("sub-"):
        label = re.sub(r"[^a-zA-Z0-9]", "", stem) or "scan"
        ents = [f"sub-{label}"] + [e for e in ents if not e.startswith("sub-")]
    return ents


def scan_dir(out_dir: str, path: str, spec: str = "") -> str:
    """The `sub-*/[ses-*/]anat` folder of `path`'s outputs under `out_dir`."""
    from madad_jax.evaluation.predict import scan_stem

    ents = entities(scan_stem(path))
    parts = [ents[0]] + [e for e in ents if e.startswith("ses-")][:1] + ["anat"]
    return os.path.join(out_dir, *parts)


def write_dataset_description(out_dir: str, model: Any) -> str:
    """`dataset_description.json` of the derivative dataset."""
    desc = {"Name": "madad-jax anomaly maps and lesion masks", "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "madad-jax",
                             "Description": "masked latent diffusion anomaly detection",
                             "CodeURL": "https://github.com/", "Container": {"Type": "none"}}],
            "SourceDatasets": [], "Checkpoint": str(model.restored.directory)}
    return files.write_json_atomic(os.path.join(out_dir, "dataset_description.json"), desc,
                                   indent=2, sort_keys=False)


def rename(paths: dict[str, str], target: str, scan: str, model: Any) -> dict[str, str]:
    """Move predict's flat outputs in `target` to their BIDS names; returns the new paths."""
    from madad_jax.evaluation.predict import scan_stem

    base = "_".join(entities(scan_stem(scan)))
    figures = os.path.join(os.path.dirname(target), "figures")
    os.makedirs(figures, exist_ok=True)
    out: dict[str, str] = {}
    names = {"anomaly": f"{base}_desc-{DESC}_probseg.nii.gz",
             "lesions": f"{base}_desc-{DESC}_mask.nii.gz",
             "lesions_tsv": f"{base}_desc-{DESC}_lesions.tsv"}
    for kind, path in paths.items():
        dest = (os.path.join(target, names[kind]) if kind in names
                else os.path.join(figures, os.path.basename(path)))
        os.replace(path, dest)
        out[kind] = dest
    raw = os.path.abspath(scan)
    cal = model.calibration or {}
    side = {"RawSources": [raw], "Sources": [raw], "SkullStripped": True}
    files.write_json_atomic(out["anomaly"][: -len(".nii.gz")] + ".json", dict(
        side, Description="anomaly map (healthy-counterpart difference), 0 outside the brain"),
        indent=2)
    if "lesions" in out:
        files.write_json_atomic(out["lesions"][: -len(".nii.gz")] + ".json", dict(
            side, Type="Lesion", Threshold=cal.get("threshold"),
            ThresholdMethod=cal.get("method"), TargetFPR=cal.get("target_fpr"),
            Calibration=model.calibration_path), indent=2)
    return out

