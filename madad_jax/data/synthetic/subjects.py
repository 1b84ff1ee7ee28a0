"""Demo subjects and splits: a subject's anatomy and lesions from its own seeds, and the 2D
slices of a split in memory.

Every random draw of a subject comes from `numpy.random.SeedSequence([seed, split, index])`,
so a subject is the same whatever the number of subjects asked for, and a test subject's
healthy counterpart (`lesions=None`) shares its anatomy, intensity changes and noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from madad_jax.data import preprocess
from madad_jax.data.synthetic.anatomy import (
    MODALITIES,
    AnatomySpec,
    Grid,
    SpatialTransform,
    randomize_tissue,
    sample_template,
    vary_intensity,
)
from madad_jax.data.synthetic.lesions import (
    LesionSpec,
    draw_lesions,
    mass_displacement,
    paint_lesions,
)

# test_healthy: subjects without lesions, scored with the test split for detection only.
SPLITS = {"train": 0, "test": 1, "val": 2, "test_healthy": 3}
SLICE_POLICIES = ("all", "lesion", "largest")


@dataclasses.dataclass
class Subject:
    name: str
    image: np.ndarray  # (X, Y, Z) float32, 0 outside the brain
    brainmask: np.ndarray  # (X, Y, Z) uint8
    seg: np.ndarray | None  # (X, Y, Z) uint8, None for healthy splits
    affine: np.ndarray  # (4, 4) voxel -> MNI mm
    lesions: list[dict[str, Any]]


def subject_name(split: str, index: int) -> str:
    return f"demo_{split}_{index:03d}"


def make_subject(
    index: int,
    split: str = "test",
    seed: int = 0,
    grid: Grid = Grid(),  # noqa: B008 (frozen)
    anatomy: AnatomySpec = AnatomySpec(),  # noqa: B008 (frozen)
    lesions: LesionSpec | None = LesionSpec(),  # noqa: B008 (frozen)
    modality: str = "T1",
) -> Subject:
    """One subject; `lesions=None` gives the healthy version of the same subject."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    seq = np.random.SeedSequence([int(seed), SPLITS[split], int(index)])
    # The fourth stream is new: the first three draw what they drew before it existed.
    rng_anat, rng_les, rng_int, rng_tis = (np.random.default_rng(s) for s in seq.spawn(4))
    pts = grid.points_mm()
    subject_anatomy = SpatialTransform(rng_anat, anatomy, grid)
    image, mask = sample_template(subject_anatomy, pts, grid, modality)
    seg = None
    drawn: list[dict[str, Any]] = []
    moved = pts
    if lesions is not None:
        drawn = draw_lesions(rng_les, image, mask, pts, grid, lesions)
        if any(les["mass_effect"] > 0 for les in drawn):
            moved = pts - mass_displacement(pts, drawn)
            image, mask = sample_template(subject_anatomy, moved, grid, modality)
    if anatomy.randomizes_tissue:
        image = randomize_tissue(rng_tis, image, mask, subject_anatomy, moved, grid, anatomy)
    if lesions is not None:
        image, seg = paint_lesions(rng_les, image, mask, pts, grid, lesions, drawn)
    image = vary_intensity(rng_int, image, mask, grid, anatomy)
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
    anatomy: AnatomySpec = AnatomySpec(),  # noqa: B008 (frozen)
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
    "largest", the slice with the largest lesion area of each subject (the S2 test policy);
    for healthy subjects "largest" and "lesion" keep one slice per subject, at a depth drawn
    from the subject's seed (one unit per subject, as in the lesioned test split).
    Returns dict(images (N,H,W,1) float32 in [-1,1], brainmasks (N,H,W) float32,
    segmentations (N,H,W) int32 or None, names): names are `{subject}-slice_{k}`, as the
    NIfTI converter names slices, and sorted.
    """
    if slices not in SLICE_POLICIES:
        raise ValueError(f"slices must be one of {SLICE_POLICIES}, got {slices!r}")
    grid = Grid(size=image_size, fov_mm=fov_mm, z_mm=tuple(z_mm), slice_mm=slice_mm)
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]] = []
    for i in range(n):
        s = make_subject(i, split, seed, grid, anatomy, lesions, modality)
        x = preprocess.normalize_percentile(s.image, s.brainmask > 0, percentiles) * 2.0 - 1.0
        ks = list(range(grid.shape[2]))
        if s.seg is None and slices != "all":
            brain = np.flatnonzero(s.brainmask.sum(axis=(0, 1)) > 0)
            pick = np.random.default_rng([int(seed), SPLITS[split], i]).integers(len(brain))
            ks = [int(brain[pick])]
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


def _spec_fields(cfg: Any) -> dict[str, Any]:
    """A config section (ConfigDict or dict) as spec fields, lists made tuples."""
    items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in items.items()}


def specs_from_config(demo: Any) -> tuple[AnatomySpec, LesionSpec]:
    """AnatomySpec and LesionSpec from a config's `data.demo` (keys `anatomy` and `lesion`)."""

    def build(cls, cfg):
        return cls() if cfg is None else cls(**_spec_fields(cfg))

    return build(AnatomySpec, demo.anatomy), build(LesionSpec, demo.lesion)


def train_anatomy(demo: Any, anatomy: AnatomySpec) -> AnatomySpec:
    """The training subjects' AnatomySpec: `anatomy` with `data.demo.train_anatomy`'s
    overrides (more variation for training, while val and test stay as they are)."""
    extra = demo.get("train_anatomy") if hasattr(demo, "get") else None
    return dataclasses.replace(anatomy, **_spec_fields(extra)) if extra else anatomy


def from_config(config: Any, splits: Sequence[str] = ("train", "test")) -> dict[str, dict]:
    """The demo's splits in memory, from `config.image_size` and `config.data.demo`.

    "train" is healthy with every slab slice; "test" and "val" are lesioned, with
    `data.demo.test_slices` as slice policy; "test_healthy" is healthy, one slice each.
    """
    demo = config.data.demo
    anatomy, lesion = specs_from_config(demo)
    common = dict(
        seed=demo.seed,
        image_size=config.image_size,
        anatomy=anatomy,
        modality=demo.modality,
        fov_mm=demo.fov_mm,
        z_mm=tuple(demo.z_mm),
        slice_mm=demo.slice_mm,
    )
    out = {}
    for split in splits:
        if split == "train":
            train_common = dict(common, anatomy=train_anatomy(demo, anatomy))
            out[split] = make_split("train", demo.n_train, lesions=None, **train_common)
        elif split == "test_healthy":
            out[split] = make_split(split, int(demo.get("n_test_healthy", 0)),
                                    slices=demo.test_slices, lesions=None, **common)
        else:
            out[split] = make_split(
                split, demo[f"n_{split}"], slices=demo.test_slices, lesions=lesion, **common
            )
    return out
