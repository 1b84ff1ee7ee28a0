"""The healthy anatomy of a demo subject: the MNI152 template, its sampling grid, and each
subject's random spatial transform and intensity changes.

The template (nilearn's MNI152 2009 T1, brain mask, grey- and white-matter maps) is sampled on
a reduced grid (an axial slab) through a per-subject transform: an affine jitter about the
brain centre, a smooth elastic displacement (a cubic B-spline of random control-point offsets)
and a local zoom of the lateral ventricles. `vary_intensity` then applies a gamma change, a
smooth multiplicative bias field, a global gain and Rician noise.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

MODALITIES = ("T1", "T2")

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
    # Tissue-class randomization (SynthSeg's idea, within a T1 ordering): with probability
    # tissue_prob the subject's image is drawn anew from its CSF, grey- and white-matter maps,
    # each class at a mean drawn from its range (relative to the template's white matter),
    # then blurred by a sigma drawn from blur_mm (another resolution).
    tissue_prob: float = 0.0
    tissue_csf: tuple[float, float] = (0.1, 0.4)
    tissue_gm: tuple[float, float] = (0.45, 0.75)
    tissue_wm: tuple[float, float] = (0.8, 1.05)
    blur_mm: tuple[float, float] = (0.0, 0.0)

    @property
    def randomizes_tissue(self) -> bool:
        return self.tissue_prob > 0 or self.blur_mm[1] > 0


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


class SpatialTransform:
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


def _sample(transform: SpatialTransform, pts: np.ndarray, grid: Grid, modality: str,
            channels: tuple[int, ...]) -> list[np.ndarray]:
    stack, world_to_vox = _template(
        _antialias_sigma_mm(grid.voxel_mm), float(grid.z_mm[0]), float(grid.z_mm[1]), modality
    )
    src = transform.source_points(pts)
    idx = (
        np.einsum("ij,j...->i...", world_to_vox[:3, :3], src)
        + world_to_vox[:3, 3, None, None, None]
    )
    return [ndi.map_coordinates(stack[c], idx, order=1, mode="constant", cval=0.0)
            for c in channels]


def sample_template(
    transform: SpatialTransform, pts: np.ndarray, grid: Grid, modality: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sample the template through the subject's transform: (clean image, brain mask)."""
    image, mask = _sample(transform, pts, grid, modality, (0, 1))
    mask = mask >= 0.5
    return image * mask, mask


def randomize_tissue(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
                     transform: SpatialTransform, pts: np.ndarray, grid: Grid,
                     spec: AnatomySpec) -> np.ndarray:
    """`spec.tissue_prob`: the image drawn anew from the subject's tissue maps; then the
    resolution blur of `spec.blur_mm`. Draws the same numbers whatever the outcome."""
    redraw = rng.uniform() < spec.tissue_prob
    means = [rng.uniform(*r) for r in (spec.tissue_csf, spec.tissue_gm, spec.tissue_wm)]
    blur = float(rng.uniform(*spec.blur_mm))
    if redraw:
        gm, wm = _sample(transform, pts, grid, "T1", (2, 3))
        csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
        # The template's white matter is ~0.9 of its scale; keep the subject in that scale.
        image = 0.9 * (means[0] * csf + means[1] * gm + means[2] * wm)
    if blur > 0:
        sigma = blur / np.asarray(grid.spacing)
        num = ndi.gaussian_filter(image * mask, sigma)
        image = num / np.maximum(ndi.gaussian_filter(mask.astype(np.float64), sigma), 1e-6)
    return (image * mask).astype(np.float32)


def vary_intensity(
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
