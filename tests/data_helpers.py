"""Tiny random NIfTI subjects for the data tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (16, 20, 12)
# A non-canonical orientation (LPS-like, with y and z swapped) so reorientation is exercised.
AFFINE = np.array(
    [[-1.0, 0, 0, 15], [0, 0, 1.2, -5], [0, -1.0, 0, 20], [0, 0, 0, 1]], dtype=np.float64
)


def volume(rng: np.random.Generator, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A random "brain" (ellipsoid of random intensities) and its mask."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    mask = (grid**2).sum(0) < 0.8
    vol = np.where(mask, rng.uniform(0.5, 2.0, shape), 0.0).astype(np.float32)
    return vol, mask


def write_subject(
    folder: Path, name: str, rng: np.random.Generator, *, lesion: int = 0,
    modality: str = "T2", mask_file: bool = True, affine: np.ndarray = AFFINE,
    sep: str = "-",
) -> dict[str, Path]:
    """Write {name}-{modality}.nii.gz (+ brainmask, + segmentation when lesion > 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    vol, mask = volume(rng)
    paths = {"image": folder / f"{name}{sep}{modality}.nii.gz"}
    nib.save(nib.Nifti1Image(vol, affine), paths["image"])
    if mask_file:
        paths["brainmask"] = folder / f"{name}{sep}brainmask.nii.gz"
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), paths["brainmask"])
    if lesion:
        seg = np.zeros(SHAPE, np.uint8)
        c = np.array(SHAPE) // 2
        seg[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - lesion : c[2] + 1] = 1
        paths["segmentation"] = folder / (
            f"{name}{sep}segmentation.nii.gz" if sep == "-" else f"{name}{sep}seg.nii.gz"
        )
        nib.save(nib.Nifti1Image(seg, affine), paths["segmentation"])
    return paths


def write_set(folder: Path, n: int, seed: int = 0, lesions: bool = True) -> list[str]:
    rng = np.random.default_rng(seed)
    names = [f"sub{i:02d}" for i in range(n)]
    for i, name in enumerate(names):
        write_subject(folder, name, rng, lesion=(1 + i % 3) if lesions else 0)
    return names


def tiny_vae_slices(root: Path, size: int = 16):
    """Two random healthy subjects converted to `root/slices`, and a random f2 VAE.

    Returns (config, encode): `encode` maps images to posterior moments (batches of 8).
    """
    import jax

    from madad_jax.config import default_config
    from madad_jax.data import convert
    from madad_jax.models import build_vae
    from madad_jax.training.latent_cache import vae_encoder

    write_set(root / "in", 2, seed=0, lesions=False)
    convert.convert_nifti(root / "in", root / "slices", modality="T2", image_size=size,
                          split="train", policies="all", progress=False)
    c = default_config()
    c.image_size = size
    c.vae.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=size)
    vae = build_vae(c)
    x = np.zeros((1, size, size, 1), np.float32)
    params = jax.jit(lambda k: vae.init(k, x, method=vae.encode))(jax.random.key(0))["params"]
    return c, vae_encoder(c, params, batch_size=8)
