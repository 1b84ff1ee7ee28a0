"""Held-out brains with painted lesions: the anatomy the demo model never saw.

The demo trains on deformed copies of one template (nilearn's MNI152 2009). These volumes
come from CAT12's IXI555 templates, an average of 555 healthy IXI subjects registered by
geodesic shooting, shipped by the `deepmriprep` package (install it with `pip install
--no-deps deepmriprep==0.3.0`; nothing is downloaded at run time):

- `test`: the skull-stripped T1 template (0.5 mm, `Template_05mm_bet.nii.gz`), resampled to
  1 mm; its intensities are the real T1 of the population, not a rendering of tissue maps.
- `val`: a T1-like contrast rendered from the level-4 shooting template's grey-matter,
  white-matter and CSF maps (1.5 mm, `Template_4_GS.nii.gz`), lesions drawn with another seed.

Neither is an individual's scan, and the two share their population: `val` is for checking
a choice, not for claims. Each split has four volumes, one per lesion kind (`KINDS`), each
with two lesions 6 to 16 mm in radius at least 20 mm inside the brain; intensities are the
white matter's times the kind's factor (`iso`: the local tissue's, with a coarse texture).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from madad_jax.data.errors import BadInputError

# Lesion kind -> (intensity factor of the white matter, texture std relative to the value);
# `iso` takes the local tissue's mean instead.
KINDS = {"hyper": (1.45, 0.05), "hypo": (0.45, 0.05), "iso": (1.0, 0.25),
         "mild_hyper": (1.3, 0.05)}
SPLITS = {"test": 0, "val": 1}
PACKAGE = "deepmriprep"
FILES = {"test": "Template_05mm_bet.nii.gz", "val": "Template_4_GS.nii.gz"}
# T1-like intensities of grey matter, white matter and CSF for the val rendering.
_T1_TISSUE = (0.62, 1.0, 0.25)
_RADIUS_MM = (6.0, 16.0)
_DEPTH_MM = 20.0


@dataclasses.dataclass
class Volume:
    """One held-out volume on a 1 mm RAS grid in MNI millimetres."""

    name: str
    image: np.ndarray  # float32, 0 outside the brain
    brainmask: np.ndarray  # uint8
    seg: np.ndarray  # uint8, the painted lesions
    affine: np.ndarray
    lesions: list[dict]


def template_path(split: str) -> str:
    """The packaged template file of `split`, or BadInputError saying how to install it."""
    if split not in SPLITS:
        raise ValueError(f"held-out split must be one of {tuple(SPLITS)}, got {split!r}")
    spec = importlib.util.find_spec(PACKAGE)  # located, not imported: it needs torch
    if spec is None or not spec.origin:
        raise BadInputError(PACKAGE, "not installed; the held-out brains ship with it: "
                                     f"pip install --no-deps {PACKAGE}==0.3.0")
    path = os.path.join(os.path.dirname(spec.origin), "data", "templates", FILES[split])
    if not os.path.isfile(path):
        raise BadInputError(path, "missing from the installed package")
    return path


def _mni_1mm(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample an axis-aligned volume (or stack of volumes on the last axis) to 1 mm."""
    import nibabel as nib
    from nibabel import processing

    vols = data[..., None] if data.ndim == 3 else data
    zoom = float(np.abs(affine[0, 0]))
    out, new_affine = [], None
    for k in range(vols.shape[-1]):
        v = vols[..., k].astype(np.float32)
        if zoom < 1.0:  # blur before decimating, so the 1 mm grid does not alias
            v = ndi.gaussian_filter(v, 0.42 * np.sqrt(1.0 / zoom**2 - 1.0))
        img = processing.resample_to_output(nib.Nifti1Image(v, affine), (1.0, 1.0, 1.0),
                                            order=1)
        img = nib.as_closest_canonical(img)
        out.append(np.asarray(img.dataobj, np.float32))
        new_affine = img.affine
    return np.stack(out, -1), np.asarray(new_affine, np.float64)


def healthy_brain(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image float32 scaled to white matter ~1, brain mask bool, affine) of `split`."""
    import nibabel as nib

    path = template_path(split)
    img = nib.load(path)
    data, affine = _mni_1mm(np.asarray(img.dataobj, np.float32), img.affine)
    if split == "test":
        t1 = data[..., 0]
        mask = ndi.binary_fill_holes(t1 > 0.05)
    else:
        gm, wm, csf = data[..., 0], data[..., 1], data[..., 2]
        mask = ndi.binary_fill_holes(ndi.binary_closing(gm + wm > 0.3, iterations=2))
        g, w, c = _T1_TISSUE
        t1 = g * gm + w * wm + c * csf
    mask = ndi.binary_opening(mask, iterations=1)
    t1 = np.where(mask, t1, 0.0)
    t1 = t1 / max(float(np.quantile(t1[mask], 0.95)), 1e-6)
    return t1.astype(np.float32), mask, affine


def _points(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float64)
    return np.einsum("ij,j...->i...", affine[:3, :3], idx) + affine[:3, 3, None, None, None]


def paint(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, affine: np.ndarray,
          kind: str, count: int = 2) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """`count` lesions of `kind` in a copy of `image`: (image, seg, lesion records)."""
    factor, texture = KINDS[kind]
    depth = ndi.distance_transform_edt(mask)
    pts = _points(image.shape, affine)
    tissue = ndi.gaussian_filter(image, 3.0) / np.maximum(
        ndi.gaussian_filter(mask.astype(np.float32), 3.0), 1e-6)
    brain = image[mask]
    white = float(np.median(brain[brain >= np.quantile(brain, 0.7)]))
    out, seg, records = image.copy(), np.zeros(image.shape, bool), []
    for _ in range(count):
        radius = float(rng.uniform(*_RADIUS_MM))
        ok = (depth >= max(_DEPTH_MM, radius)) & ~ndi.binary_dilation(seg, iterations=12)
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            break
        vox = np.unravel_index(int(rng.choice(cand)), image.shape)
        centre = pts[(slice(None), *vox)]
        axes = radius * (1.0 + rng.uniform(-0.25, 0.25, 3))
        rot = Rotation.random(random_state=rng).as_matrix()
        d = np.einsum("ij,j...->i...", rot.T, pts - centre[:, None, None, None])
        r = np.sqrt(((d / axes[:, None, None, None]) ** 2).sum(0))
        inside = (r <= 1.0) & mask
        edge = np.clip((1.15 - r) / 0.3, 0.0, 1.0) * mask  # a partial-volume rim
        noise = ndi.gaussian_filter(rng.standard_normal(image.shape), 1.5)
        noise /= max(float(noise[inside].std()), 1e-6)
        local = float(tissue[vox]) if kind == "iso" else white
        value = local * factor * (1.0 + texture * noise)
        out = (1.0 - edge) * out + edge * np.maximum(value, 0.0)
        seg |= inside
        records.append(dict(kind=kind, centre_mm=centre.round(1).tolist(),
                            radius_mm=round(radius, 2), local=round(local, 4),
                            factor=factor))
    return np.where(mask, out, 0.0).astype(np.float32), seg, records


def volumes(split: str, seed: int = 0) -> list[Volume]:
    """The four lesioned volumes of `split`, one per kind, reproducible from `seed`."""
    image, mask, affine = healthy_brain(split)
    out = []
    for i, kind in enumerate(KINDS):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], i]))
        painted, seg, records = paint(rng, image, mask, affine, kind)
        out.append(Volume(f"heldout_{split}_{kind}", painted, mask.astype(np.uint8),
                          seg.astype(np.uint8), affine, records))
    return out
