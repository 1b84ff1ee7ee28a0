"""Lesions of the demo's test subjects, each with its ground-truth mask.

A lesion is an ellipsoid whose surface is warped by smooth noise (`irregularity`), filled with
a textured intensity set relative to the local tissue: hypo-intense lesions fall in the range of
CSF and dark grey matter, hyper-intense ones (placed in darker tissue) in the range of white
matter, iso-intense ones only change texture. Lesions push the tissue around them outward
(mass effect).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from madad_jax.data.synthetic.anatomy import Grid

CONTRASTS = ("hypo", "iso", "hyper")


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


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation."""
    n = ndi.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="wrap")
    return n / max(float(n.std()), 1e-8)


def _local_mean(image: np.ndarray, mask: np.ndarray, sigma_vox) -> np.ndarray:
    """Gaussian-weighted mean of the image over brain voxels (normalized convolution)."""
    num = ndi.gaussian_filter(image * mask, sigma_vox)
    den = ndi.gaussian_filter(mask.astype(np.float64), sigma_vox)
    return num / np.maximum(den, 1e-6)


def mass_displacement(pts: np.ndarray, lesions: list[dict[str, Any]]) -> np.ndarray:
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


def draw_lesions(
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


def paint_lesions(
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
