"""The embedded demo data set: healthy "subjects" made from the MNI152 template, plus lesions.

Nothing is downloaded. `nilearn` ships the MNI152 2009 T1 template, its brain mask and its
grey/white-matter probability maps; every subject is sampled from them on a reduced grid (an
axial slab through the basal ganglia and the lateral ventricles) through its own random
spatial transform:

- a small affine jitter (per-axis scale, rotation) about the brain centre;
- a smooth elastic displacement (a cubic B-spline of random control-point offsets);
- a random enlargement or shrinkage of the lateral ventricles (a local radial zoom).

Then the intensities change per subject: a gamma (contrast) change, a smooth multiplicative
bias field, a global gain and Rician noise. The result is skull-stripped (zero outside the
brain mask), as the reference's inputs are.

Test subjects get lesions, each with a ground-truth mask. A lesion is an ellipsoid whose
surface is warped by smooth noise (`irregularity`), filled with a textured intensity set
relative to the local tissue: hypo-intense lesions fall in the range of CSF and dark grey
matter, hyper-intense ones (placed in darker tissue) in the range of white matter, iso-intense
ones only change texture. Lesions push the tissue around them outward (mass effect). Because
their intensities overlap those of normal tissue, a plain intensity threshold cannot isolate
them (see `madad_jax.evaluation.baseline`); a model of normal anatomy can, since they have the wrong
intensity or texture for their location.

Every random draw of a subject comes from `numpy.random.SeedSequence([seed, split, index])`,
so a subject is the same whatever the number of subjects asked for, and a test subject's
healthy counterpart (`lesions=None`) shares its anatomy, intensity changes and noise.

Two outputs:

- `write_dataset` writes NIfTI volumes, `{out}/{split}/{subject}_{MODALITY}.nii.gz` with
  `{subject}_brainmask.nii.gz` and, for lesioned splits, `{subject}_seg.nii.gz`, in MNI space
  (RAS, millimetres), to be converted like user data. CLI:
  `python -m madad_jax.data.synthetic --out DIR --n-train N --n-test M --seed S`.
- `make_split` / `from_config` return 2D slices in memory, in the format of
  `madad_jax.data.png.read_reference_split` (images in [-1, 1], -1 outside the brain).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from madad_jax.data import preprocess

MODALITIES = ("T1", "T2")
SPLITS = {"train": 0, "test": 1, "val": 2}
CONTRASTS = ("hypo", "iso", "hyper")
SLICE_POLICIES = ("all", "lesion", "largest")

# In-plane centre of the MNI152 brain's bounding box, and the lateral ventricles' centroid (mm).
_BRAIN_CENTRE_MM = np.array([0.0, -17.0, 16.0])
_VENTRICLE_CENTRE_MM = np.array([0.0, -8.0, 16.0])
# Box (mm) over which the random control-point fields are defined; it covers the template.
_FIELD_BOX_MM = (np.array([-110.0, -140.0, -90.0]), np.array([110.0, 110.0, 100.0]))
# CSF, grey- and white-matter intensities of the T2-like contrast.
_T2_TISSUE = (1.0, 0.55, 0.35)
# How far around the slab the template is kept, for displacements reaching in from outside.
_TEMPLATE_MARGIN_MM = 40.0


@dataclasses.dataclass(frozen=True)
class Grid:
    """The voxel grid subjects are sampled on: an axial slab, RAS, MNI millimetres."""

    size: int = 96  # voxels along x and y
    fov_mm: float = 208.0  # in-plane field of view
    z_mm: tuple[float, float] = (-8.0, 40.0)  # positions of the first and last slice
    slice_mm: float = 3.0  # distance between slices

    @property
    def voxel_mm(self) -> float:
        return self.fov_mm / self.size

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (self.voxel_mm, self.voxel_mm, self.slice_mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        nz = int(round((self.z_mm[1] - self.z_mm[0]) / self.slice_mm)) + 1
        return (self.size, self.size, nz)

    @property
    def affine(self) -> np.ndarray:
        v = self.voxel_mm
        a = np.diag([v, v, self.slice_mm, 1.0])
        a[0, 3] = _BRAIN_CENTRE_MM[0] - (self.size - 1) / 2 * v
        a[1, 3] = _BRAIN_CENTRE_MM[1] - (self.size - 1) / 2 * v
        a[2, 3] = self.z_mm[0]
        return a

    def points_mm(self) -> np.ndarray:
        """World coordinates of every voxel, shape (3, X, Y, Z)."""
        idx = np.indices(self.shape, dtype=np.float64)
        a = self.affine
        return np.einsum("ij,j...->i...", a[:3, :3], idx) + a[:3, 3, None, None, None]


@dataclasses.dataclass(frozen=True)
class AnatomySpec:
    """Normal variation between subjects. Ranges are (low, high) of uniform draws."""

    scale: float = 0.05  # per-axis scale in 1 +- scale
    rotate_deg: float = 4.0  # in-plane rotation in +-rotate_deg, half that about x and y
    deform_mm: float = 3.0  # std of the elastic control-point offsets
    deform_spacing_mm: float = 24.0  # control-point spacing of the elastic field
    ventricles: tuple[float, float] = (-0.15, 0.35)  # local zoom at the ventricles (>0: larger)
    gamma: tuple[float, float] = (0.7, 1.4)  # intensity exponent (contrast)
    bias: float = 0.06  # std of the log bias field at its control points
    bias_spacing_mm: float = 80.0
    gain: tuple[float, float] = (0.6, 1.6)
    noise: tuple[float, float] = (0.005, 0.02)  # Rician sigma, relative to white matter


@dataclasses.dataclass(frozen=True)
class LesionSpec:
    """How test-subject lesions are drawn. Ranges are (low, high) of uniform draws."""

    count: tuple[int, int] = (1, 2)  # lesions per subject, inclusive
    radius_mm: tuple[float, float] = (8.0, 18.0)  # mean ellipsoid radius
    elongation: float = 0.3  # each semi-axis is radius * (1 +- elongation)
    irregularity: float = 0.5  # 0: smooth ellipsoid; 1: strongly warped surface
    texture: tuple[float, float] = (0.05, 0.2)  # std of the internal intensity texture
    contrasts: tuple[str, ...] = CONTRASTS
    contrast_probs: tuple[float, ...] = (0.45, 0.2, 0.35)
    # Lesion intensity / local tissue intensity, per contrast.
    hypo: tuple[float, float] = (0.35, 0.65)
    iso: tuple[float, float] = (0.92, 1.08)
    hyper: tuple[float, float] = (1.2, 1.45)
    # Bounds on a lesion's mean intensity, as quantiles of the subject's healthy brain: hyper
    # lesions stay within the white-matter range, hypo lesions within the CSF range (and never
    # cross the local tissue). 1 and 0 lift the bounds.
    hyper_cap_q: float = 0.9
    hypo_floor_q: float = 0.02
    mass_effect: tuple[float, float] = (0.0, 0.3)  # boundary push as a fraction of the radius
    edge_mm: float = 2.0  # width of the partial-volume rim

    def __post_init__(self) -> None:
        bad = set(self.contrasts) - set(CONTRASTS)
        if bad:
            raise ValueError(f"unknown lesion contrasts {sorted(bad)}; choose from {CONTRASTS}")
        if len(self.contrast_probs) != len(self.contrasts):
            raise ValueError("contrast_probs must have one entry per contrast")
        if self.count[0] < 0 or self.count[1] < self.count[0]:
            raise ValueError(f"bad lesion count range {self.count}")


@dataclasses.dataclass
class Subject:
    name: str
    image: np.ndarray  # (X, Y, Z) float32, 0 outside the brain
    brainmask: np.ndarray  # (X, Y, Z) uint8
    seg: np.ndarray | None  # (X, Y, Z) uint8, None for healthy splits
    affine: np.ndarray  # (4, 4) voxel -> MNI mm
    lesions: list[dict[str, Any]]


def _antialias_sigma_mm(voxel_mm: float) -> float:
    """Extra blur of the 1 mm template so that sampling at `voxel_mm` does not alias."""
    return 0.42 * float(np.sqrt(max(voxel_mm**2 - 1.0, 0.0)))


@functools.lru_cache(maxsize=4)
def _template(
    sigma_mm: float, z_lo: float, z_hi: float, modality: str
) -> tuple[np.ndarray, np.ndarray]:
    """The template (image, brain mask, GM, WM) blurred by sigma_mm, cropped in z.

    Returns the stacked volumes (4, X, Y, Z) float32 and the world -> voxel matrix.
    """
    from nilearn import datasets  # slow to import; only needed here

    t1 = datasets.load_mni152_template(resolution=1)
    vols = [
        t1,
        datasets.load_mni152_brain_mask(resolution=1),
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
    ]
    affine = np.array(t1.affine, dtype=np.float64)  # a copy: nilearn caches its images
    for v in vols[1:]:
        if v.shape != t1.shape or not np.allclose(v.affine, affine):
            raise RuntimeError("nilearn's MNI152 volumes do not share one grid")
    k_lo = max(int(np.floor(z_lo - _TEMPLATE_MARGIN_MM - affine[2, 3])), 0)
    k_hi = min(int(np.ceil(z_hi + _TEMPLATE_MARGIN_MM - affine[2, 3])) + 1, t1.shape[2])
    stack = np.stack([np.asarray(v.dataobj, dtype=np.float32)[:, :, k_lo:k_hi] for v in vols])
    if modality == "T2":
        mask, gm, wm = stack[1], stack[2], stack[3]
        csf = np.clip(mask - gm - wm, 0.0, 1.0)
        c, g, w = _T2_TISSUE
        stack[0] = (c * csf + g * gm + w * wm) * (mask > 0)
    if sigma_mm > 0:
        for i in range(len(stack)):
            stack[i] = ndi.gaussian_filter(stack[i], sigma_mm)  # the template is 1 mm isotropic
    affine[2, 3] += k_lo
    return stack, np.linalg.inv(affine)


def _control_field(rng: np.random.Generator, spacing_mm: float, channels: int) -> np.ndarray:
    """Standard-normal values on a control grid over _FIELD_BOX_MM, shape (channels, ...)."""
    lo, hi = _FIELD_BOX_MM
    n = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    return rng.standard_normal((channels, *n))


def _spline_matrix(coords: np.ndarray, n: int) -> np.ndarray:
    """(len(coords), n) weights of cubic B-spline interpolation of n samples at coords."""
    eye = np.eye(n)
    return np.stack(
        [ndi.map_coordinates(e, coords[None], order=3, mode="nearest") for e in eye], axis=1
    )


def _eval_field(field: np.ndarray, spacing_mm: float, grid: Grid) -> np.ndarray:
    """Cubic B-spline interpolation of control values at every grid voxel, (C, X, Y, Z).

    The grid is axis-aligned, so the 3D spline factorizes into one small matrix per axis.
    """
    a = grid.affine
    mats = []
    for axis in range(3):
        world = a[axis, axis] * np.arange(grid.shape[axis]) + a[axis, 3]
        coords = (world - _FIELD_BOX_MM[0][axis]) / spacing_mm
        mats.append(_spline_matrix(coords, field.shape[1 + axis]))
    return np.einsum("ai,bj,ck,nijk->nabc", *mats, field, optimize=True)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="wrap")
    return n / max(float(n.std()), 1e-8)


def _local_mean(image: np.ndarray, mask: np.ndarray, sigma_vox) -> np.ndarray:
    """Gaussian-weighted mean of the image over brain voxels (normalized convolution)."""
    num = ndi.gaussian_filter(image * mask, sigma_vox)
    den = ndi.gaussian_filter(mask.astype(np.float64), sigma_vox)
    return num / np.maximum(den, 1e-6)


class _Anatomy:
    """One subject's spatial transform from output-grid points to template points.

    The elastic displacement is evaluated at the grid voxels and added after the affine
    jitter and the ventricle zoom (rather than composed with them): for fields this smooth
    the difference is immaterial, and it keeps the spline evaluation separable and fast.
    """

    def __init__(self, rng: np.random.Generator, spec: AnatomySpec, grid: Grid):
        scale = 1.0 + rng.uniform(-spec.scale, spec.scale, 3)
        r = spec.rotate_deg
        angles = rng.uniform([-r, -r / 2, -r / 2], [r, r / 2, r / 2])
        self.matrix = Rotation.from_euler("zyx", angles, degrees=True).as_matrix() / scale
        self.ventricles = float(rng.uniform(*spec.ventricles))
        field = spec.deform_mm * _control_field(rng, spec.deform_spacing_mm, 3)
        self.elastic = _eval_field(field, spec.deform_spacing_mm, grid)

    def source_points(self, pts: np.ndarray) -> np.ndarray:
        """Template points (3, X, Y, Z) for grid points `pts` (possibly displaced)."""
        c = _BRAIN_CENTRE_MM.reshape(3, *([1] * (pts.ndim - 1)))
        q = c + np.einsum("ij,j...->i...", self.matrix, pts - c)
        v = _VENTRICLE_CENTRE_MM.reshape(c.shape)
        w = np.exp(-((q - v) ** 2).sum(0) / (2 * 18.0**2))
        q = q - self.ventricles * w * (q - v)
        return q + self.elastic


def _sample(
    anatomy: _Anatomy, pts: np.ndarray, grid: Grid, modality: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sample the template through the subject's transform: (clean image, brain mask)."""
    stack, world_to_vox = _template(
        _antialias_sigma_mm(grid.voxel_mm), float(grid.z_mm[0]), float(grid.z_mm[1]), modality
    )
    src = anatomy.source_points(pts)
    idx = (
        np.einsum("ij,j...->i...", world_to_vox[:3, :3], src)
        + world_to_vox[:3, 3, None, None, None]
    )
    image = ndi.map_coordinates(stack[0], idx, order=1, mode="constant", cval=0.0)
    mask = ndi.map_coordinates(stack[1], idx, order=1, mode="constant", cval=0.0) >= 0.5
    return image * mask, mask


def _mass_displacement(pts: np.ndarray, lesions: list[dict[str, Any]]) -> np.ndarray:
    """Outward radial displacement (mm) of the tissue around each lesion, shape like pts.

    Inside radius r the tissue moves by m*d; outside by m*r^3/d^2, as around an expanding
    sphere in an incompressible medium.
    """
    u = np.zeros_like(pts)
    for les in lesions:
        m, r = les["mass_effect"], les["radius_mm"]
        if m <= 0:
            continue
        d_vec = pts - np.asarray(les["centre_mm"]).reshape(3, *([1] * (pts.ndim - 1)))
        d = np.sqrt((d_vec**2).sum(0))
        mag = np.where(d < r, m * d, m * r**3 / np.maximum(d, 1e-6) ** 2)
        u += mag * d_vec / np.maximum(d, 1e-6)
    return u


def _draw_lesions(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    pts: np.ndarray,
    grid: Grid,
    spec: LesionSpec,
) -> list[dict[str, Any]]:
    """Choose each lesion's kind, size, orientation, centre and intensity on a healthy subject."""
    spacing = np.asarray(grid.spacing)
    edt = ndi.distance_transform_edt(mask, sampling=spacing)
    tissue = _local_mean(image, mask, 3.0 / spacing)
    brain = image[mask]
    hyper_max, hypo_min = np.quantile(brain, 0.5), np.quantile(brain, 0.4)
    cap = np.quantile(brain, spec.hyper_cap_q) if spec.hyper_cap_q < 1 else np.inf
    floor = np.quantile(brain, spec.hypo_floor_q) if spec.hypo_floor_q > 0 else 0.0
    inner_z = np.zeros(mask.shape, bool)
    inner_z[:, :, 1:-1] = True
    probs = np.asarray(spec.contrast_probs, dtype=np.float64)
    lesions: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(spec.count[0], spec.count[1] + 1))):
        kind = str(rng.choice(spec.contrasts, p=probs / probs.sum()))
        radius = float(rng.uniform(*spec.radius_mm))
        ok = mask & inner_z & (edt >= max(0.6 * radius, 5.0))
        for les in lesions:  # keep lesions apart
            d = np.sqrt(((pts - np.reshape(les["centre_mm"], (3, 1, 1, 1))) ** 2).sum(0))
            ok &= d > 0.8 * (radius + les["radius_mm"])
        if kind == "hyper":
            placed = ok & (tissue <= hyper_max)
        elif kind == "hypo":
            placed = ok & (tissue >= hypo_min)
        else:
            placed = ok
        cand = np.flatnonzero(placed if placed.any() else ok)
        if cand.size == 0:
            continue
        flat = int(rng.choice(cand))
        vox = np.unravel_index(flat, mask.shape)
        local = float(tissue[vox])
        value = min(max(local * float(rng.uniform(*getattr(spec, kind))), floor), cap)
        if kind == "hyper":
            value = max(value, local)
        elif kind == "hypo":
            value = min(value, local)
        lesions.append(
            dict(
                contrast=kind,
                centre_mm=[float(pts[i][vox]) for i in range(3)],
                radius_mm=radius,
                axes=(radius * (1 + rng.uniform(-spec.elongation, spec.elongation, 3))).tolist(),
                rotation=Rotation.random(random_state=rng).as_matrix().tolist(),
                value=value,
                texture=float(rng.uniform(*spec.texture)),
                mass_effect=float(rng.uniform(*spec.mass_effect)),
            )
        )
    return lesions


def _paint_lesions(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    pts: np.ndarray,
    grid: Grid,
    spec: LesionSpec,
    lesions: list[dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray]:
    """Blend the lesions into the (mass-displaced) clean image; return (image, segmentation)."""
    spacing = np.asarray(grid.spacing)
    seg = np.zeros(mask.shape, bool)
    out = image.copy()
    for les in lesions:
        r = les["radius_mm"]
        local = np.einsum(
            "ji,j...->i...",
            np.asarray(les["rotation"]),
            pts - np.reshape(les["centre_mm"], (3, 1, 1, 1)),
        )
        rho = np.sqrt(((local / np.reshape(les["axes"], (3, 1, 1, 1))) ** 2).sum(0))
        warp = _smooth_noise(rng, mask.shape, max(0.3 * r, 2.0) / spacing)
        rho = rho + 0.35 * spec.irregularity * warp
        alpha = np.clip(0.5 + (1.0 - rho) * r / spec.edge_mm, 0.0, 1.0) * mask
        core = alpha >= 0.5
        labels, n = ndi.label(core)
        if n > 1:  # keep the largest piece; drop islands the warp may have split off
            sizes = ndi.sum(core, labels, range(1, n + 1))
            core = labels == (int(np.argmax(sizes)) + 1)
            alpha *= ndi.binary_dilation(core, iterations=1)
        if not core.any():
            continue
        texture = _smooth_noise(rng, mask.shape, 2.0 / spacing)
        value = les["value"] * (1.0 + les["texture"] * texture)
        out = (1.0 - alpha) * out + alpha * np.maximum(value, 0.0)
        seg |= core
    return out * mask, seg


def _intensity(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, grid: Grid, spec: AnatomySpec
) -> np.ndarray:
    """Gamma, bias field, gain and Rician noise."""
    gamma = rng.uniform(*spec.gamma)
    bias_field = spec.bias * _control_field(rng, spec.bias_spacing_mm, 1)
    gain = rng.uniform(*spec.gain)
    sigma = rng.uniform(*spec.noise)
    out = np.maximum(image, 0.0) ** gamma
    out = out * np.exp(_eval_field(bias_field, spec.bias_spacing_mm, grid)[0]) * gain
    # Relative to the template's white matter (~0.9) times the gain, not to the image, so
    # that a subject and its lesioned version get the very same noise.
    n1, n2 = rng.standard_normal((2, *image.shape)) * sigma * gain
    out = np.sqrt((out + n1) ** 2 + n2**2)
    return (out * mask).astype(np.float32)


def subject_name(split: str, index: int) -> str:
    return f"demo_{split}_{index:03d}"


def make_subject(
    index: int,
    split: str = "test",
    seed: int = 0,
    grid: Grid = Grid(),
    anatomy: AnatomySpec = AnatomySpec(),
    lesions: LesionSpec | None = LesionSpec(),
    modality: str = "T1",
) -> Subject:
    """One subject; `lesions=None` gives the healthy version of the same subject."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    seq = np.random.SeedSequence([int(seed), SPLITS[split], int(index)])
    rng_anat, rng_les, rng_int = (np.random.default_rng(s) for s in seq.spawn(3))
    pts = grid.points_mm()
    subject_anatomy = _Anatomy(rng_anat, anatomy, grid)
    image, mask = _sample(subject_anatomy, pts, grid, modality)
    seg = None
    drawn: list[dict[str, Any]] = []
    if lesions is not None:
        drawn = _draw_lesions(rng_les, image, mask, pts, grid, lesions)
        if any(les["mass_effect"] > 0 for les in drawn):
            image, mask = _sample(
                subject_anatomy, pts - _mass_displacement(pts, drawn), grid, modality
            )
        image, seg = _paint_lesions(rng_les, image, mask, pts, grid, lesions, drawn)
    image = _intensity(rng_int, image, mask, grid, anatomy)
    return Subject(
        name=subject_name(split, index),
        image=image,
        brainmask=mask.astype(np.uint8),
        seg=None if seg is None else seg.astype(np.uint8),
        affine=grid.affine,
        lesions=[
            {k: les[k] for k in ("contrast", "centre_mm", "radius_mm", "mass_effect")}
            for les in drawn
        ],
    )


def _axial(volume: np.ndarray, k: int) -> np.ndarray:
    """Slice k as an image: rows run anterior to posterior, columns the subject's left to right."""
    return np.rot90(volume[:, :, k])


def make_split(
    split: str,
    n: int,
    seed: int = 0,
    image_size: int = 64,
    slices: str = "all",
    lesions: LesionSpec | None = None,
    anatomy: AnatomySpec = AnatomySpec(),
    modality: str = "T1",
    fov_mm: float = 208.0,
    z_mm: tuple[float, float] = (-8.0, 40.0),
    slice_mm: float = 3.0,
    min_lesion_px: int = 1,
    percentiles: tuple[float, float] = preprocess.SliceOptions.percentiles,
) -> dict[str, Any]:
    """2D slices of n subjects, as `read_reference_split` returns them.

    Healthy unless `lesions` is given; then lesioned, with segmentations. Intensities are
    normalized per volume as the NIfTI converter does (`preprocess.normalize_percentile`),
    then mapped to [-1, 1] (-1 outside the brain).
    `slices`: "all" slab slices; "lesion", those with at least `min_lesion_px` lesion pixels;
    "largest", the slice with the largest lesion area of each subject (the S2 test policy).
    Returns dict(images (N,H,W,1) float32 in [-1,1], brainmasks (N,H,W) float32,
    segmentations (N,H,W) int32 or None, names): names are `{subject}-slice_{k}`, as the
    NIfTI converter names slices, and sorted.
    """
    if slices not in SLICE_POLICIES:
        raise ValueError(f"slices must be one of {SLICE_POLICIES}, got {slices!r}")
    if lesions is None and slices != "all":
        raise ValueError(f"slice policy {slices!r} needs lesions")
    grid = Grid(size=image_size, fov_mm=fov_mm, z_mm=tuple(z_mm), slice_mm=slice_mm)
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = []
    for i in range(n):
        s = make_subject(i, split, seed, grid, anatomy, lesions, modality)
        x = preprocess.normalize_percentile(s.image, s.brainmask > 0, percentiles) * 2.0 - 1.0
        ks = list(range(grid.shape[2]))
        if s.seg is not None:
            area = s.seg.sum(axis=(0, 1))
            if slices == "largest":
                ks = [int(np.argmax(area))] if area.max() > 0 else []
            elif slices == "lesion":
                ks = [k for k in ks if area[k] >= min_lesion_px]
        for k in ks:
            seg = None if s.seg is None else _axial(s.seg, k)
            rows.append((f"{s.name}-slice_{k}", _axial(x, k), _axial(s.brainmask, k), seg))
    rows.sort(key=lambda r: r[0])
    h = w = image_size
    return dict(
        images=np.asarray([r[1] for r in rows], np.float32).reshape(-1, h, w, 1),
        brainmasks=np.asarray([r[2] for r in rows], np.float32).reshape(-1, h, w),
        segmentations=None
        if lesions is None
        else np.asarray([r[3] for r in rows], np.int32).reshape(-1, h, w),
        names=[r[0] for r in rows],
    )


def specs_from_config(demo: Any) -> tuple[AnatomySpec, LesionSpec]:
    """AnatomySpec and LesionSpec from a config's `data.demo` (keys `anatomy` and `lesion`)."""

    def build(cls, cfg):
        if cfg is None:
            return cls()
        items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in items.items()})

    return build(AnatomySpec, demo.get("anatomy")), build(LesionSpec, demo.get("lesion"))


def from_config(config: Any, splits: Sequence[str] = ("train", "test")) -> dict[str, dict]:
    """The demo's splits in memory, from `config.image_size` and `config.data.demo`.

    "train" is healthy with every slab slice; "test" and "val" are lesioned, with
    `data.demo.test_slices` as slice policy.
    """
    demo = config.data.demo
    anatomy, lesion = specs_from_config(demo)
    common = dict(
        seed=demo.seed,
        image_size=config.image_size,
        anatomy=anatomy,
        modality=demo.get("modality", "T1"),
        fov_mm=demo.get("fov_mm", 208.0),
        z_mm=tuple(demo.get("z_mm", (-8.0, 40.0))),
        slice_mm=demo.get("slice_mm", 3.0),
    )
    out = {}
    for split in splits:
        if split == "train":
            out[split] = make_split("train", demo.n_train, lesions=None, **common)
        else:
            out[split] = make_split(
                split, demo[f"n_{split}"], slices=demo.test_slices, lesions=lesion, **common
            )
    return out


def _save_nifti(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(volume, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=4)  # 4: MNI152
    img.set_sform(affine, code=4)
    nib.save(img, path)


def write_dataset(
    out: str | os.PathLike,
    n_train: int,
    n_test: int,
    seed: int = 0,
    n_val: int = 0,
    voxel_mm: float = 2.0,
    anatomy: AnatomySpec = AnatomySpec(),
    lesions: LesionSpec = LesionSpec(),
    modality: str = "T1",
    fov_mm: float = 208.0,
    z_mm: tuple[float, float] = (-8.0, 40.0),
    slice_mm: float = 3.0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the demo subjects as NIfTI into `{out}/{split}/`; return the manifest.

    Each file is written under a temporary name and renamed, so an interrupted run leaves
    only whole files. `{out}/demo.json` (written last) records the settings and subjects.
    """
    from tqdm import tqdm

    out = Path(out)
    size = int(round(fov_mm / voxel_mm))
    grid = Grid(size=size, fov_mm=fov_mm, z_mm=tuple(z_mm), slice_mm=slice_mm)
    jobs = [("train", i) for i in range(n_train)]
    jobs += [("val", i) for i in range(n_val)] + [("test", i) for i in range(n_test)]
    manifest: dict[str, Any] = dict(
        seed=seed,
        modality=modality,
        shape=list(grid.shape),
        affine=grid.affine.tolist(),
        anatomy=dataclasses.asdict(anatomy),
        lesion=dataclasses.asdict(lesions),
        subjects={s: [] for s in ("train", "val", "test")},
    )
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out))
    try:
        for split, i in tqdm(jobs, desc="demo subjects", disable=not progress):
            s = make_subject(
                i, split, seed, grid, anatomy, None if split == "train" else lesions, modality
            )
            files = {
                f"{s.name}_{modality}.nii.gz": s.image,
                f"{s.name}_brainmask.nii.gz": s.brainmask,
            }
            if s.seg is not None:
                files[f"{s.name}_seg.nii.gz"] = s.seg
            (out / split).mkdir(exist_ok=True)
            for fname, vol in files.items():
                _save_nifti(vol, s.affine, tmp / fname)
                os.replace(tmp / fname, out / split / fname)
            manifest["subjects"][split].append(dict(name=s.name, lesions=s.lesions))
        with open(tmp / "demo.json", "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp / "demo.json", out / "demo.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m madad_jax.data.synthetic",
        description="Write the offline demo data set (MNI152-based subjects) as NIfTI volumes.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n-train", type=int, default=40, help="healthy training subjects")
    p.add_argument("--n-test", type=int, default=40, help="lesioned test subjects")
    p.add_argument("--n-val", type=int, default=0, help="lesioned validation subjects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modality", choices=MODALITIES, default="T1")
    p.add_argument("--voxel-mm", type=float, default=2.0, help="in-plane voxel size")
    p.add_argument("--slice-mm", type=float, default=3.0, help="distance between slices")
    p.add_argument("--verbose", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        if min(args.n_train, args.n_test, args.n_val) < 0:
            raise ValueError("subject counts must be >= 0")
        if args.voxel_mm <= 0 or args.slice_mm <= 0:
            raise ValueError("--voxel-mm and --slice-mm must be > 0")
        t0 = time.time()
        write_dataset(
            args.out,
            args.n_train,
            args.n_test,
            seed=args.seed,
            n_val=args.n_val,
            voxel_mm=args.voxel_mm,
            slice_mm=args.slice_mm,
            modality=args.modality,
            progress=True,
        )
        print(
            f"wrote {args.n_train + args.n_val + args.n_test} subjects to {args.out} "
            f"in {time.time() - t0:.1f} s"
        )
    except (OSError, ValueError) as err:
        if args.verbose:
            raise
        where = getattr(err, "filename", None) or args.out
        print(
            f"{where}: {err.strerror if isinstance(err, OSError) and err.strerror else err}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
