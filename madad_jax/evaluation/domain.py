"""What a checkpoint was trained on, and how a scan given to `mode=predict` departs from it.

`training_domain` reads it from the run config stored with the checkpoint (and the training
data's manifest settings): for a demo model (`data.kind=demo`), the MNI-space grid of its
slices (`data.demo.fov_mm`, `z_mm`, `slice_mm` and `image_size`, placed as
`data.synthetic.Grid` places them); for other models, what the manifest recorded (image size,
slicing axis, fit, slice selection), possibly nothing.

`input_slicing` is the grid a scan is resampled onto for a demo model: the training grid in
plane, its slice positions (subdivided for finer scans) extended over the scan's brain.

The checks return plain sentences, one per problem, empty when the scan is in distribution:
`check_volume` (voxel size, field of view, MNI registration, recorded settings) and
`check_slices` (scored slices the training data had no counterpart of).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from madad_jax.data import nifti, preprocess

# NIfTI qform/sform codes of a standard space: 2 aligned, 3 Talairach, 4 MNI152, 5 template.
STANDARD_SPACE_CODES = (2, 3, 4, 5)
# nilearn's MNI152 2009 brain mask (1 mm): the centroid of its voxels and the 0.5th / 99.5th
# percentiles of their positions along x, y and z, in mm.
MNI_BRAIN_CENTROID_MM = (0.0, -22.0, 9.5)
MNI_BRAIN_LO_MM = (-67.0, -100.0, -60.0)
MNI_BRAIN_HI_MM = (67.0, 66.0, 75.0)
# Thresholds of the checks.
COARSER = 1.15  # voxel spacing above this multiple of the training spacing: too coarse
FINER = 8.0  # ... below 1/FINER of it: far off (wrong units?)
CENTROID_MM = 15.0  # the brain's centroid this far (x, y) from the MNI brain's: not MNI
EXTENT_RATIO = (0.8, 1.25)  # the brain's extent along x or y over the MNI brain's
Z_MARGIN_MM = 15.0  # the brain reaching this far beyond the MNI brain in z: not MNI
MAX_SUBDIVIDE = 4  # at most this many predicted slices per training slice spacing


@dataclasses.dataclass(frozen=True)
class TrainingDomain:
    """What the model's training slices were, as far as the run recorded it.

    kind: the run's `data.kind` (demo | arrayrecord | png), "" when no run config is known.
    The MNI-grid fields (fov_mm, z_mm, slice_mm, origin_xy_mm) come from `data.demo`;
    settings: the training data manifest's slicing settings ({} when none was found).
    """

    kind: str
    image_size: int
    source: str = ""  # where the run config came from: checkpoint | run config
    fov_mm: float | None = None
    z_mm: tuple[float, float] | None = None
    slice_mm: float | None = None
    origin_xy_mm: tuple[float, float] | None = None  # world (x, y) of pixel (0, 0)
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def mni(self) -> bool:
        """Trained on slices of a fixed MNI-space grid (the demo)."""
        return self.kind == "demo"

    @property
    def has_grid(self) -> bool:
        return self.fov_mm is not None

    @property
    def pixel_mm(self) -> float:
        return float(self.fov_mm) / self.image_size

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, "image_size": self.image_size, "source": self.source}
        if self.has_grid:
            d.update(fov_mm=self.fov_mm, z_mm=list(self.z_mm), slice_mm=self.slice_mm,
                     pixel_mm=self.pixel_mm, origin_xy_mm=list(self.origin_xy_mm))
        if self.settings:
            d["settings"] = dict(self.settings)
        return d


def _get(tree: Any, key: str) -> Any:
    """`tree[a][b]` for key "a.b" in a dict or ConfigDict; None when absent."""
    for part in key.split("."):
        if tree is None or not hasattr(tree, "get"):
            return None
        tree = tree.get(part)
    return tree


def training_domain(
    run_config: Any, image_size: int, settings: Mapping[str, Any] | None = None,
    source: str = "checkpoint", fallback: Any = None,
) -> TrainingDomain:
    """The domain of a run config (a dict or ConfigDict; None: nothing recorded).

    The MNI grid is read from `data.demo` of `run_config`, else of `fallback`; it is filled in
    for any kind, so that `predict.geometry=mni_grid` can use it, but only demo runs are
    `mni`.
    """
    from madad_jax.data.synthetic import Grid

    kind = str(_get(run_config, "data.kind") or "")
    demo = _get(run_config, "data.demo") or _get(fallback, "data.demo")
    fields: dict[str, Any] = {}
    if demo is not None and _get(demo, "fov_mm") is not None:
        z = tuple(float(v) for v in _get(demo, "z_mm"))
        grid = Grid(size=int(image_size), fov_mm=float(_get(demo, "fov_mm")), z_mm=z,
                    slice_mm=float(_get(demo, "slice_mm")))
        fields = dict(fov_mm=grid.fov_mm, z_mm=z, slice_mm=grid.slice_mm,
                      origin_xy_mm=(float(grid.affine[0, 3]), float(grid.affine[1, 3])))
    return TrainingDomain(kind=kind, image_size=int(image_size),
                          source=source if run_config else "", settings=dict(settings or {}),
                          **fields)


def training_grid(domain: TrainingDomain) -> preprocess.AxialGrid:
    """The grid of the training slices themselves (z from z_mm[0] to z_mm[1])."""
    z0, z1 = domain.z_mm
    n = int(round((z1 - z0) / domain.slice_mm)) + 1
    x0, y0 = domain.origin_xy_mm
    return preprocess.AxialGrid(domain.image_size, domain.pixel_mm, (x0, y0, z0),
                                domain.slice_mm, n)


def brain_points(subject: nifti.Subject) -> np.ndarray:
    """World (RAS mm) positions of the brain voxels, shape (N, 3)."""
    a = preprocess.canonical_affine(subject.image)
    idx = np.stack(np.nonzero(subject.brainmask)).astype(np.float64)
    return (a[:3, :3] @ idx + a[:3, 3:4]).T


def _spacing_by_world_axis(volume: nifti.Volume) -> np.ndarray:
    """The voxel spacing along the voxel axis closest to each world axis x, y, z."""
    a = preprocess.canonical_affine(volume)
    sizes = preprocess.voxel_sizes(a)
    out = np.zeros(3)
    for axis, world in enumerate(np.argmax(np.abs(a[:3, :3]), axis=0)):
        out[world] = max(out[world], sizes[axis])
    out[out == 0] = sizes.max()  # a degenerate (sheared) affine: be conservative
    return out


def input_slicing(
    domain: TrainingDomain, subject: nifti.Subject, points: np.ndarray | None = None
) -> preprocess.GridSlicing:
    """The grid a scan is predicted on: the training grid in plane; slices at the training
    positions z_mm[0] + k * slice_mm, subdivided (up to MAX_SUBDIVIDE times) when the scan's
    slices are finer, and extended to cover all of the scan's brain."""
    pts = brain_points(subject) if points is None else points
    dz = float(_spacing_by_world_axis(subject.image)[2])
    n = int(np.clip(math.floor(domain.slice_mm / dz + 1e-6), 1, MAX_SUBDIVIDE))
    step = domain.slice_mm / n
    z0 = domain.z_mm[0]
    k_lo = math.floor((float(pts[:, 2].min()) - z0) / step + 1e-6)
    k_hi = math.ceil((float(pts[:, 2].max()) - z0) / step - 1e-6)
    x0, y0 = domain.origin_xy_mm
    grid = preprocess.AxialGrid(domain.image_size, domain.pixel_mm, (x0, y0, z0 + k_lo * step),
                                step, k_hi - k_lo + 1)
    return preprocess.GridSlicing(grid, (domain.pixel_mm, domain.pixel_mm, domain.slice_mm),
                                  tuple(domain.z_mm))


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values) + " mm"


def _header_codes(path: str) -> tuple[int, int] | None:
    import nibabel as nib

    try:
        header = nib.load(path).header
        return int(header["qform_code"]), int(header["sform_code"])
    except Exception:  # not a NIfTI header: nothing to check
        return None


def _check_spacing(subject: nifti.Subject, domain: TrainingDomain) -> list[str]:
    spacing = _spacing_by_world_axis(subject.image)
    train = np.array([domain.pixel_mm, domain.pixel_mm, domain.slice_mm])
    ratio = spacing / train
    where = f"the training slices' {domain.pixel_mm:.3g} mm pixels and {domain.slice_mm:.3g} mm " \
            "slice spacing"
    if np.any(ratio > COARSER):
        return [f"voxel size {_mm(spacing)} (x, y, z) is coarser than {where}: the model never "
                "saw images this blurred"]
    if np.any(ratio < 1 / FINER):
        return [f"voxel size {_mm(spacing)} (x, y, z) is far finer than {where} (are the "
                "header's units millimetres?)"]
    return []


def _check_fov(points: np.ndarray, domain: TrainingDomain) -> list[str]:
    half = domain.pixel_mm / 2
    x0, y0 = domain.origin_xy_mm
    lo = np.array([x0, y0]) - half
    hi = lo + domain.fov_mm
    beyond = np.maximum(np.maximum(lo - points[:, :2], points[:, :2] - hi), 0.0).max(1)
    out = int(np.count_nonzero(beyond > 0))
    if not out:
        return []
    cx, cy = (lo + hi) / 2
    return [f"{out} brain voxels ({100 * out / len(points):.2g}% of the brain) lie outside the "
            f"training field of view ({domain.fov_mm:.4g} mm square centred at x={cx:.3g}, "
            f"y={cy:.3g} mm), up to {beyond.max():.3g} mm beyond its edge; they get no map"]


def _check_mni(subject: nifti.Subject, points: np.ndarray) -> list[str]:
    out = []
    codes = _header_codes(subject.image.path)
    if codes is not None and not set(codes) & set(STANDARD_SPACE_CODES):
        out.append(f"the header declares no standard space (qform_code={codes[0]}, "
                   f"sform_code={codes[1]}; MNI152 is 4, aligned 2): the model expects a volume "
                   "registered to MNI152")
    problems = []
    centroid = points.mean(0)
    ref = np.asarray(MNI_BRAIN_CENTROID_MM)
    shift = float(np.linalg.norm(centroid[:2] - ref[:2]))
    if shift > CENTROID_MM:
        problems.append(f"its centroid (x, y) = ({centroid[0]:.0f}, {centroid[1]:.0f}) mm is "
                        f"{shift:.0f} mm from the MNI152 brain's ({ref[0]:.0f}, {ref[1]:.0f})")
    lo, hi = np.percentile(points, [0.5, 99.5], axis=0)
    ref_lo, ref_hi = np.asarray(MNI_BRAIN_LO_MM), np.asarray(MNI_BRAIN_HI_MM)
    for axis, name in ((0, "x"), (1, "y")):
        r = (hi[axis] - lo[axis]) / (ref_hi[axis] - ref_lo[axis])
        if not EXTENT_RATIO[0] <= r <= EXTENT_RATIO[1]:
            problems.append(f"its extent along {name} is {r:.2f} times the MNI152 brain's")
    if lo[2] < ref_lo[2] - Z_MARGIN_MM or hi[2] > ref_hi[2] + Z_MARGIN_MM:
        problems.append(f"it spans z = {lo[2]:.0f}..{hi[2]:.0f} mm, the MNI152 brain "
                        f"{ref_lo[2]:.0f}..{ref_hi[2]:.0f} mm")
    if problems:
        out.append("the brain does not look registered to MNI152: " + "; ".join(problems))
    return out


def check_volume(
    subject: nifti.Subject, domain: TrainingDomain, points: np.ndarray | None = None,
    opts: preprocess.SliceOptions | None = None, geometry: str = "",
) -> list[str]:
    """How the scan departs from the training domain, one sentence per problem.

    With an MNI grid (`geometry == "mni_grid"`): voxel size against the training pixel and
    slice spacing, brain outside the training field of view, and (for demo models) signs
    that the scan is not registered to MNI152. Otherwise: the slicing `opts` against the
    recorded training settings (image size, axis, fit), and that a demo model is not used
    on its grid; nothing when none were recorded.
    """
    if geometry == "mni_grid" and domain.has_grid:
        pts = brain_points(subject) if points is None else points
        out = _check_spacing(subject, domain) + _check_fov(pts, domain)
        if domain.mni:
            out += _check_mni(subject, pts)
        if opts is not None and opts.axis != 2:
            out.append(f"predict.axis={opts.axis} is ignored: the model was trained on axial "
                       "slices of its MNI grid")
        return out
    s = domain.settings
    out = []
    if domain.mni:
        out.append(f"the model was trained on slices of a fixed MNI-space grid, predict.geometry="
                   f"{geometry or '?'} cuts this scan at another scale and position (use auto "
                   "or mni_grid)")
    if "image_size" in s and int(s["image_size"]) != domain.image_size:
        out.append(f"the training slices were {s['image_size']} px, the model's image_size is "
                   f"{domain.image_size}")
    if opts is not None and "axis" in s and int(s["axis"]) != opts.axis:
        out.append(f"the training data were sliced along axis {s['axis']}, predict.axis is "
                   f"{opts.axis}")
    if opts is not None and "fit" in s and str(s["fit"]) != opts.fit:
        out.append(f"the training slices were made with fit={s['fit']}, this scan with "
                   f"fit={opts.fit}: the brain appears at another scale")
    return out


def check_slices(
    rows: Sequence[Mapping[str, Any]], domain: TrainingDomain,
    subject: nifti.Subject | None = None, opts: preprocess.SliceOptions | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """The scored slices the training data had no counterpart of: (sentences, one entry per
    such slice for the summary).

    Rows with `z_mm` (an MNI grid): slices outside the training z range (by more than half
    a slice spacing). Otherwise, with a recorded slice selection (min_brain_fraction,
    policy=middle) and the subject: slices that selection would have left out.
    """
    if not rows:
        return [], []
    if "z_mm" in rows[0] and domain.has_grid:
        z0, z1 = domain.z_mm
        tol = domain.slice_mm / 2
        outside = [{"slice_index": int(r["slice_index"]), "z_mm": float(r["z_mm"])}
                   for r in rows if not z0 - tol <= r["z_mm"] <= z1 + tol]
        if not outside:
            return [], []
        below = [o["z_mm"] for o in outside if o["z_mm"] < z0]
        above = [o["z_mm"] for o in outside if o["z_mm"] > z1]
        where = [f"{len(zs)} {side} it (z = {min(zs):.4g}..{max(zs):.4g} mm)"
                 for zs, side in ((below, "below"), (above, "above")) if zs]
        return [f"{len(outside)} of {len(rows)} brain slices lie outside the training z range "
                f"{z0:.4g}..{z1:.4g} mm: {' and '.join(where)}; they are scored but the model "
                "never saw such slices (listed in the json)"], outside
    s = domain.settings
    if subject is None or opts is None or "min_brain_fraction" not in s:
        return [], []
    axis = opts.axis
    other = tuple(a for a in range(3) if a != axis)
    area = subject.brainmask.sum(axis=other)
    policy = "middle" if s.get("policy") == "middle" else "all"
    recorded = preprocess.SliceOptions(
        image_size=opts.image_size, axis=axis, policy=policy,
        min_brain_fraction=float(s["min_brain_fraction"]),
        middle_fraction=float(s.get("middle_fraction", 0.5)))
    kept = set(preprocess.select_slices(area, None, recorded))
    top = float(area.max())
    outside = [{"slice_index": int(r["slice_index"]),
                "brain_fraction": float(area[int(r["slice_index"])] / top)}
               for r in rows if int(r["slice_index"]) not in kept]
    if not outside:
        return [], []
    idx = [o["slice_index"] for o in outside]
    why = f"less brain than {recorded.min_brain_fraction:g} of the largest slice's"
    if policy == "middle":
        why += f" or lie outside the middle {recorded.middle_fraction:g} of the brain"
    return [f"{len(outside)} of {len(rows)} brain slices (indices {min(idx)}..{max(idx)}) hold "
            f"{why}, unlike every training slice; they are scored (listed in the json)"], outside
