"""From a loaded subject to 2D training / test slices, and from slices back to its volume.

Steps: percentile intensity normalization inside the brain mask; slicing along one axis of
the RAS+ volume (axis 2 = axial); a 90-degree rotation so that anterior is up; an optional
crop to the brain's bounding box; zero-padding to a square; resizing to `image_size`
(linear for the image, nearest for masks). Every step is recorded in a JSON-able
`geometry` so that per-slice results map back into the input's own voxel grid.

For models trained on slices of a fixed world grid (the demo's MNI-space slices),
`grid_slices` resamples a volume through its affine onto an `AxialGrid` instead, and
`grid_to_volume` maps per-slice results back by the same affines.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage

from madad_jax.data.errors import BadInputError
from madad_jax.data.nifti import Subject, Volume

POLICIES = ("all", "middle", "healthy", "largest_lesion")


@dataclasses.dataclass(frozen=True)
class SliceOptions:
    """How volumes become slices.

    policy: "all" brain slices; "middle": the central `middle_fraction` of the brain's
      extent (S1); "healthy": brain slices without lesion voxels (training);
      "largest_lesion": the one slice per volume with the most lesion voxels (S2 test).
    A "brain slice" has a brain area of at least `min_brain_fraction` of the volume's
    largest slice area.
    fit: "pad" keeps the whole plane (padded to a square); "brain" first crops it to the
      brain's bounding box (over all slices of the volume) plus `margin` voxels.
    """

    image_size: int = 256
    axis: int = 2
    policy: str = "all"
    percentiles: tuple[float, float] = (0.5, 99.5)
    min_brain_fraction: float = 0.1
    middle_fraction: float = 0.5
    fit: str = "pad"
    margin: int = 4

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"slice policy must be one of {POLICIES}, got {self.policy!r}")
        if self.fit not in ("pad", "brain"):
            raise ValueError(f"fit must be 'pad' or 'brain', got {self.fit!r}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"axis must be 0, 1 or 2, got {self.axis}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"need 0 <= lo < hi <= 100 percentiles, got {self.percentiles}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["percentiles"] = list(self.percentiles)
        return d


def normalize_percentile(
    volume: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float], path: str = ""
) -> np.ndarray:
    """Scale intensities so the brain's [lo, hi] percentiles map to [0, 1], clipped; 0 outside."""
    inside = volume[mask]
    lo, hi = np.percentile(inside, percentiles).astype(np.float32)
    if not hi > lo:
        raise BadInputError(path, "constant intensity inside the brain mask")
    out = np.clip((volume.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out[~mask] = 0.0
    return out


def select_slices(
    brain_area: np.ndarray, lesion_area: np.ndarray | None, opts: SliceOptions
) -> list[int]:
    """Indices of the slices kept by `opts.policy`, given per-slice voxel counts."""
    if opts.policy == "largest_lesion":
        if lesion_area is None or lesion_area.max() == 0:
            return []
        return [int(np.argmax(lesion_area))]
    keep = brain_area >= max(1.0, opts.min_brain_fraction * float(brain_area.max()))
    idx = np.flatnonzero(keep)
    if opts.policy == "middle" and idx.size:
        first, last = int(idx[0]), int(idx[-1])
        half = (last - first + 1) * opts.middle_fraction / 2
        centre = (first + last) / 2
        idx = idx[(idx >= centre - half) & (idx <= centre + half)]
    if opts.policy == "healthy" and lesion_area is not None:
        idx = idx[lesion_area[idx] == 0]
    return [int(i) for i in idx]


def _plane(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    return np.rot90(np.take(volume, index, axis=axis))


def _box(union: np.ndarray, opts: SliceOptions) -> tuple[int, int, int, int]:
    h, w = union.shape
    if opts.fit == "pad":
        return 0, h, 0, w
    rows, cols = np.flatnonzero(union.any(1)), np.flatnonzero(union.any(0))
    m = opts.margin
    return (max(0, rows[0] - m), min(h, rows[-1] + 1 + m),
            max(0, cols[0] - m), min(w, cols[-1] + 1 + m))


def _fit(plane: np.ndarray, geom: dict, order: int) -> np.ndarray:
    """Crop, pad to a square and resize one rotated plane."""
    r0, r1, c0, c1 = geom["crop"]
    pt, pl = geom["pad"]
    side, size = geom["side"], geom["image_size"]
    square = np.zeros((side, side), plane.dtype)
    square[pt : pt + r1 - r0, pl : pl + c1 - c0] = plane[r0:r1, c0:c1]
    if side == size:
        return square
    return ndimage.zoom(square, size / side, order=order, mode="grid-constant", grid_mode=True)


def volume_geometry(subject: Subject, opts: SliceOptions) -> dict[str, Any]:
    """The JSON-able mapping between the subject's voxel grid and its slices."""
    vol = subject.image
    union = np.rot90(subject.brainmask.any(axis=opts.axis))
    r0, r1, c0, c1 = (int(v) for v in _box(union, opts))
    h, w = r1 - r0, c1 - c0
    side = max(h, w)
    return {
        "axis": opts.axis,
        "plane": list(union.shape),
        "crop": [r0, r1, c0, c1],
        "pad": [(side - h) // 2, (side - w) // 2],
        "side": side,
        "image_size": opts.image_size,
        "canonical_shape": list(vol.data.shape),
        "native_shape": list(vol.shape),
        "orientation": vol.orientation.tolist(),
    }


def subject_slices(subject: Subject, opts: SliceOptions) -> list[dict[str, Any]]:
    """The slices `opts.policy` keeps, each with image, masks and slice-level provenance."""
    axis = opts.axis
    other = tuple(a for a in range(3) if a != axis)
    brain_area = subject.brainmask.sum(axis=other)
    lesion_area = None if subject.segmentation is None else subject.segmentation.sum(axis=other)
    if opts.policy == "largest_lesion" and subject.segmentation is None:
        raise BadInputError(subject.image.path, "policy largest_lesion needs a segmentation")
    indices = select_slices(brain_area, lesion_area, opts)
    if not indices:
        return []
    norm = normalize_percentile(
        subject.image.data, subject.brainmask, opts.percentiles, subject.image.path
    )
    geom = volume_geometry(subject, opts)
    geom_json = json.dumps(geom, sort_keys=True)
    out = []
    for k in indices:
        img = np.clip(_fit(_plane(norm, k, axis), geom, order=1), 0.0, 1.0)
        mask = _fit(_plane(subject.brainmask.astype(np.uint8), k, axis), geom, order=0)
        img[mask == 0] = 0.0
        row = {
            "image": (img * np.float32(2.0) - np.float32(1.0)).astype(np.float32),
            "brainmask": mask.astype(np.uint8),
            "slice_index": k,
            "axis": axis,
            "geometry": geom_json,
            "lesion_area": 0 if lesion_area is None else int(lesion_area[k]),
        }
        if subject.segmentation is not None:
            row["segmentation"] = _fit(_plane(subject.segmentation, k, axis), geom, order=0)
        out.append(row)
    return out


def slices_to_volume(
    slices: np.ndarray, indices: list[int] | np.ndarray, geometry: dict | str, order: int = 1
) -> np.ndarray:
    """Place per-slice maps (n, image_size, image_size) back into the input's voxel grid.

    The inverse of `subject_slices`' geometry: resize back, un-pad, un-crop, un-rotate,
    stack along the slicing axis and undo the canonical reorientation. Voxels of slices
    that are not given are 0.
    """
    g = json.loads(geometry) if isinstance(geometry, str) else geometry
    canonical = np.zeros(g["canonical_shape"], np.float32)
    r0, r1, c0, c1 = g["crop"]
    pt, pl = g["pad"]
    side, size = g["side"], g["image_size"]
    for sl, k in zip(np.asarray(slices, np.float32), indices, strict=True):
        if side != size:
            sl = ndimage.zoom(sl, side / size, order=order, mode="grid-constant", grid_mode=True)
        plane = np.zeros(g["plane"], np.float32)
        plane[r0:r1, c0:c1] = sl[pt : pt + r1 - r0, pl : pl + c1 - c0]
        index = [slice(None)] * 3
        index[g["axis"]] = int(k)
        canonical[tuple(index)] = np.rot90(plane, -1)
    back = ornt.ornt_transform(
        ornt.axcodes2ornt(("R", "A", "S")), np.asarray(g["orientation"], dtype=float)
    )
    return np.ascontiguousarray(ornt.apply_orientation(canonical, back))


# --- Slices on a fixed world grid (models trained on MNI-space slices, e.g. the demo). ---

# Sigma (in mm, per mm of voxel spacing) of the Gaussian blur that keeps resampling to a
# coarser grid from aliasing; the demo's synthetic subjects are made with the same rule
# (0.42 * sqrt(target^2 - source^2) mm, `data.synthetic.anatomy`).
ANTIALIAS_SIGMA = 0.42


@dataclasses.dataclass(frozen=True)
class AxialGrid:
    """Axial slices on a fixed world (RAS+ mm) grid.

    Voxel (i, j, k) lies at x = x0 + i * pixel_mm, y = y0 + j * pixel_mm, z = z0 + k * step_mm;
    the image of slice k is `np.rot90` of plane [:, :, k] (anterior up, the subject's left on
    the right), as the demo's training slices are cut.
    """

    size: int  # pixels along x and y
    pixel_mm: float
    origin_mm: tuple[float, float, float]  # (x0, y0, z0): the centre of voxel (0, 0, 0)
    step_mm: float  # distance between slices
    num_slices: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.num_slices)

    @property
    def affine(self) -> np.ndarray:
        """Voxel index -> world mm."""
        a = np.diag([self.pixel_mm, self.pixel_mm, self.step_mm, 1.0])
        a[:3, 3] = self.origin_mm
        return a

    def z_mm(self) -> np.ndarray:
        """World z of every slice."""
        return self.origin_mm[2] + self.step_mm * np.arange(self.num_slices)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["origin_mm"] = [float(v) for v in self.origin_mm]
        return d


@dataclasses.dataclass(frozen=True)
class GridSlicing:
    """How a volume is resampled onto an `AxialGrid`.

    antialias_mm: the sampling (mm along world x, y, z) the training slices had; input
      axes finer than it are blurred first (`ANTIALIAS_SIGMA`).
    norm_z_mm: intensities are normalized with the percentiles of the brain voxels whose
      slices lie in this world z range (the training volumes' extent); None: all of them.
    """

    grid: AxialGrid
    antialias_mm: tuple[float, float, float]
    norm_z_mm: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid.to_dict(), "antialias_mm": list(self.antialias_mm),
                "norm_z_mm": None if self.norm_z_mm is None else list(self.norm_z_mm)}


def canonical_affine(vol: Volume) -> np.ndarray:
    """The voxel -> world affine of `vol.data` (the RAS+ reoriented array)."""
    to_ras = ornt.ornt_transform(vol.orientation, ornt.axcodes2ornt(("R", "A", "S")))
    return vol.affine @ ornt.inv_ornt_aff(to_ras, vol.shape)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """The spacing (mm) along each voxel axis of `affine`."""
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))


def _antialias_sigmas(affine: np.ndarray, target_mm: tuple[float, float, float]) -> np.ndarray:
    """Per voxel axis: the blur (in voxels) that brings it to `target_mm` of the world axis
    it runs closest to; 0 where it is already as coarse."""
    spacing = voxel_sizes(affine)
    world_axis = np.argmax(np.abs(affine[:3, :3]), axis=0)
    target = np.asarray(target_mm, np.float64)[world_axis]
    sigma_mm = ANTIALIAS_SIGMA * np.sqrt(np.maximum(target**2 - spacing**2, 0.0))
    return sigma_mm / spacing


def _sample(data: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples of `data` at voxel coordinates (3, ...), 0 outside."""
    return ndimage.map_coordinates(data, coords, order=1, mode="constant", cval=0.0)


def resample_to_grid(
    subject: Subject, slicing: GridSlicing
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The subject's image (raw intensities, 0 outside the brain), brain mask and
    segmentation on `slicing.grid`.

    The image and the mask are blurred along the axes finer than `slicing.antialias_mm`,
    then sampled trilinearly (the mask: >= 0.5); the segmentation is > 0.5 of its trilinear
    samples.
    """
    affine = canonical_affine(subject.image)
    grid = slicing.grid
    idx = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    ga = grid.affine
    world = ga[:3, :3] @ idx + ga[:3, 3:4]
    to_vox = np.linalg.inv(affine)
    coords = (to_vox[:3, :3] @ world + to_vox[:3, 3:4]).reshape(3, *grid.shape)
    sigma = _antialias_sigmas(affine, slicing.antialias_mm)
    image = subject.image.data.astype(np.float32)
    mask = subject.brainmask.astype(np.float32)
    if np.any(sigma > 0):
        image = ndimage.gaussian_filter(image, sigma)
        mask = ndimage.gaussian_filter(mask, sigma)
    mask_g = _sample(mask, coords) >= 0.5
    image_g = (_sample(image, coords) * mask_g).astype(np.float32)
    seg_g = None
    if subject.segmentation is not None:
        seg_g = (_sample(subject.segmentation.astype(np.float32), coords) > 0.5).astype(np.uint8)
    return image_g, mask_g, seg_g


def grid_slices(
    subject: Subject, slicing: GridSlicing, percentiles: tuple[float, float]
) -> list[dict[str, Any]]:
    """Every slice of `slicing.grid` that holds brain, as `subject_slices` rows (plus the
    slice's world `z_mm`); `slice_index` is the grid's slice index."""
    image, mask, seg = resample_to_grid(subject, slicing)
    if not mask.any():
        return []
    z = slicing.grid.z_mm()
    stats = mask
    if slicing.norm_z_mm is not None:
        lo, hi = slicing.norm_z_mm
        inside = (z >= lo - 1e-3) & (z <= hi + 1e-3)
        if mask[:, :, inside].sum() >= max(1, 0.01 * mask.sum()):
            stats = mask & inside[None, None, :]
    vlo, vhi = np.percentile(image[stats], percentiles).astype(np.float32)
    if not vhi > vlo:
        raise BadInputError(subject.image.path, "constant intensity inside the brain mask")
    norm = np.clip((image - vlo) / (vhi - vlo), 0.0, 1.0).astype(np.float32)
    norm[~mask] = 0.0
    geom_json = json.dumps(dict(slicing.to_dict(), kind="axial_grid"), sort_keys=True)
    out = []
    for k in np.flatnonzero(mask.any(axis=(0, 1))):
        img = np.rot90(norm[:, :, k])
        row = {
            "image": (img * np.float32(2.0) - np.float32(1.0)).astype(np.float32),
            "brainmask": np.rot90(mask[:, :, k]).astype(np.uint8),
            "slice_index": int(k),
            "z_mm": float(z[k]),
            "axis": 2,
            "geometry": geom_json,
            "lesion_area": 0 if seg is None else int(seg[:, :, k].sum()),
        }
        if seg is not None:
            row["segmentation"] = np.ascontiguousarray(np.rot90(seg[:, :, k]))
        out.append(row)
    return out


def grid_to_volume(
    slices: np.ndarray,
    masks: np.ndarray,
    indices: list[int] | np.ndarray,
    grid: AxialGrid,
    volume: Volume,
    brainmask: np.ndarray,
) -> np.ndarray:
    """Place per-slice maps (n, size, size) of `grid` back into the volume's own voxel grid.

    Each brain voxel gets the trilinear interpolation of the maps at its world position,
    weighted by the slices' brain masks (so the background does not dilute the brain's
    edge); voxels outside the brain or away from every mapped brain pixel get 0.
    """
    values = np.zeros(grid.shape, np.float32)
    weights = np.zeros(grid.shape, np.float32)
    for sl, m, k in zip(np.asarray(slices, np.float32), np.asarray(masks, np.float32),
                        indices, strict=True):
        values[:, :, int(k)] = np.rot90(sl * m, -1)
        weights[:, :, int(k)] = np.rot90(m, -1)
    idx = np.nonzero(brainmask)
    vox = np.stack(idx).astype(np.float64)
    a = np.linalg.inv(grid.affine) @ canonical_affine(volume)
    coords = a[:3, :3] @ vox + a[:3, 3:4]
    num, den = _sample(values, coords), _sample(weights, coords)
    canonical = np.zeros(volume.data.shape, np.float32)
    canonical[idx] = np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)
    return np.ascontiguousarray(volume.to_native(canonical))
