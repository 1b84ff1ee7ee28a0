"""Loading and validating NIfTI volumes, in the closest canonical (RAS+) orientation.

Inputs must already be registered (the reference used MNI152, 1 mm) and skull-stripped;
this module does neither. Every problem with a file raises `BadInputError` naming it.
"""

from __future__ import annotations

import dataclasses
import os

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

from madad_jax.data.errors import BadInputError

AFFINE_ATOL = 1e-3  # mm; the affines of an image and its masks must agree this closely


@dataclasses.dataclass
class Volume:
    """A 3D volume reoriented to RAS+, with what is needed to map results back."""

    path: str
    data: np.ndarray  # canonical (RAS+) voxel array
    affine: np.ndarray  # the file's own affine, float64 (4,4)
    shape: tuple[int, int, int]  # the file's own voxel shape
    orientation: np.ndarray  # nibabel orientation of the file (axis, flip) per axis

    def to_native(self, canonical: np.ndarray) -> np.ndarray:
        """Map an array in this volume's canonical grid back to the file's own grid."""
        back = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), self.orientation)
        return ornt.apply_orientation(canonical, back)


def _open(path: str) -> nib.spatialimages.SpatialImage:
    if not os.path.exists(path):
        raise BadInputError(path, "file not found")
    if os.path.isdir(path):
        raise BadInputError(path, "is a directory, expected a NIfTI file")
    try:
        return nib.load(path)
    except Exception as err:  # nibabel raises many types for corrupt headers
        problem = f"not a readable NIfTI file ({type(err).__name__}: {err})"
        raise BadInputError(path, problem) from err


def load_volume(path: str | os.PathLike, dtype=np.float32) -> Volume:
    """Load a 3D NIfTI volume (trailing singleton dimensions are dropped) in RAS+ order."""
    path = os.fspath(path)
    img = _open(path)
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise BadInputError(path, f"expected a 3D volume, got {len(img.shape)}D shape {img.shape}")
    if min(shape) < 1:
        raise BadInputError(path, f"empty volume of shape {shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise BadInputError(path, "invalid (non-finite or singular) affine")
    try:
        data = np.asarray(img.dataobj, dtype=dtype).reshape(shape)
    except Exception as err:  # truncated or corrupt voxel data
        raise BadInputError(path, f"cannot read voxel data ({type(err).__name__}: {err})") from err
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise BadInputError(path, f"{bad} NaN/Inf voxels")
    orientation = ornt.io_orientation(affine)
    to_ras = ornt.ornt_transform(orientation, ornt.axcodes2ornt(("R", "A", "S")))
    data = np.ascontiguousarray(ornt.apply_orientation(data, to_ras))
    return Volume(path, data, affine, shape, orientation)


def check_same_grid(ref: Volume, other: Volume, what: str) -> None:
    """Raise unless `other` has the same voxel shape and affine as `ref`."""
    if other.shape != ref.shape:
        raise BadInputError(
            other.path, f"{what} shape {other.shape} differs from the image's {ref.shape}"
        )
    diff = float(np.max(np.abs(other.affine - ref.affine)))
    if diff > AFFINE_ATOL:
        raise BadInputError(
            other.path, f"{what} affine differs from the image's (max difference {diff:.4g})"
        )


@dataclasses.dataclass
class Subject:
    """One subject's image with its brain mask and (optional) segmentation, all RAS+."""

    name: str
    image: Volume
    brainmask: np.ndarray  # bool, canonical grid
    segmentation: np.ndarray | None  # uint8 {0,1}, canonical grid
    brainmask_path: str | None
    segmentation_path: str | None


def load_subject(
    name: str,
    image: str | os.PathLike,
    brainmask: str | os.PathLike | None = None,
    segmentation: str | os.PathLike | None = None,
) -> Subject:
    """Load and cross-check one subject's files.

    Without a brain-mask file the mask is the image's nonzero voxels (the inputs are
    skull-stripped). Segmentation labels > 0 count as lesion.
    """
    vol = load_volume(image)
    if brainmask is not None:
        mvol = load_volume(brainmask)
        check_same_grid(vol, mvol, "brain mask")
        mask = mvol.data > 0
        mask_path = mvol.path
    else:
        mask = vol.data != 0
        mask_path = None
    if not mask.any():
        raise BadInputError(mask_path or vol.path, "empty brain mask")
    seg = None
    seg_path = None
    if segmentation is not None:
        svol = load_volume(segmentation)
        check_same_grid(vol, svol, "segmentation")
        seg = (svol.data > 0).astype(np.uint8)
        seg_path = svol.path
    return Subject(name, vol, mask, seg, mask_path, seg_path)
