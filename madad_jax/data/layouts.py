"""Where a data set's NIfTI files are: the folder layouts and the per-subject discovery.

`LAYOUTS` names the known layouts (flat, synthetic, brats, atlas); `discover_nifti` finds one
`Unit` per subject under a root (`python -m madad_jax.data.convert nifti` uses both).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping

from madad_jax.data.errors import BadInputError
from madad_jax.data.shardset import Unit

# File layouts: glob patterns relative to the input directory. `{subject}` is the subject
# id, `{modality}` / `{modality_lower}` the modality; `*` matches within one folder level.
LAYOUTS: dict[str, dict[str, str | None]] = {
    # {subject}-{MODALITY}.nii.gz, {subject}-brainmask.nii.gz, {subject}-segmentation.nii.gz
    # (the reference's PNG naming; also IXI's flat files, e.g. IXI002-Guys-0828-T1.nii.gz).
    "flat": {
        "image": "{subject}-{modality}.nii*",
        "brainmask": "{subject}-brainmask.nii*",
        "segmentation": "{subject}-segmentation.nii*",
    },
    # {subject}_{MODALITY}.nii.gz, {subject}_brainmask.nii.gz, {subject}_seg.nii.gz
    # (madad_jax.data.synthetic writes these, one folder per split).
    "synthetic": {
        "image": "{subject}_{modality}.nii*",
        "brainmask": "{subject}_brainmask.nii*",
        "segmentation": "{subject}_seg.nii*",
    },
    # BraTS 2021: BraTS2021_00000/BraTS2021_00000_flair.nii.gz and ..._seg.nii.gz.
    "brats": {
        "image": "{subject}/{subject}_{modality_lower}.nii*",
        "brainmask": None,
        "segmentation": "{subject}/{subject}_seg.nii*",
    },
    # ATLAS 2.0 (BIDS, in MNI152 space): R001/sub-r001s001/ses-1/anat/...
    "atlas": {
        "image": "*/{subject}/ses-*/anat/{subject}_ses-*_space-MNI152NLin2009aSym_T1w.nii*",
        "brainmask": None,
        "segmentation": "*/{subject}/ses-*/anat/"
        "{subject}_ses-*_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii*",
    },
}


def _fill(pattern: str, modality: str | None) -> str:
    if modality is None:
        return pattern.replace("{modality}", "*").replace("{modality_lower}", "*")
    return pattern.replace("{modality}", modality).replace("{modality_lower}", modality.lower())


def _regex(pattern: str) -> re.Pattern:
    parts, seen = [], False
    for tok in re.split(r"(\{subject\}|\*)", pattern):
        if tok == "{subject}":
            parts.append("(?P=subject)" if seen else "(?P<subject>[^/]+)")
            seen = True
        elif tok == "*":
            parts.append("[^/]*")
        else:
            parts.append(re.escape(tok))
    return re.compile("".join(parts))


def find_files(
    root: str, pattern: str, modality: str | None, unique: bool = True
) -> dict[str, str]:
    """{subject: path} for the files under `root` matching `pattern`.

    `modality=None` makes the modality a wildcard. With `unique` a subject matching two
    files is an error; otherwise the first is kept.
    """
    filled = _fill(pattern, modality)
    rx = _regex(filled)
    out: dict[str, str] = {}
    pattern = os.path.join(glob.escape(root), filled.replace("{subject}", "*"))
    for path in sorted(glob.glob(pattern)):
        m = rx.fullmatch(os.path.relpath(path, root))
        if m is None:
            continue
        subject = m["subject"]
        if subject in out:
            if not unique:
                continue
            raise BadInputError(path, f"subject {subject} matches {filled} twice ({out[subject]})")
        out[subject] = path
    return out


def check_root(root: str) -> None:
    if not os.path.exists(root):
        raise BadInputError(root, "directory not found")
    if not os.path.isdir(root):
        raise BadInputError(root, "not a directory")
    try:
        os.listdir(root)
    except PermissionError as err:
        raise BadInputError(root, "directory is not readable (permission denied)") from err


def discover_nifti(
    root: str, modality: str, layout: Mapping[str, str | None]
) -> list[Unit]:
    """One unit per subject found by any of the layout's patterns (any modality)."""
    check_root(root)
    images = find_files(root, layout["image"], modality)
    subjects = set(images)
    subjects.update(find_files(root, layout["image"], None, unique=False))
    others: dict[str, dict[str, str]] = {}
    for role in ("brainmask", "segmentation"):
        if layout.get(role):
            others[role] = find_files(root, layout[role], None)
            subjects.update(others[role])
    if not subjects:
        raise BadInputError(root, f"no NIfTI files match {_fill(layout['image'], modality)}")
    if not images:
        pattern = _fill(layout["image"], modality)
        raise BadInputError(root, f"no {modality} images (pattern {pattern})")
    units = []
    for s in sorted(subjects):
        inputs = [("image", images.get(s) or _missing(root, layout["image"], modality, s))]
        for role, found in others.items():
            if found:  # a role present for some subjects is required for all
                inputs.append((role, found.get(s) or _missing(root, layout[role], None, s)))
        units.append(Unit(key=s, subject=s, inputs=tuple(inputs)))
    return units


def _missing(root: str, pattern: str, modality: str | None, subject: str) -> str:
    return "missing:" + os.path.join(root, _fill(pattern, modality).replace("{subject}", subject))
