"""How VAE latents are normalized for the diffusion model, and statistics that set it.

Two forms, chosen by the config:

- scale (the reference): `z = latent * latent_scale` (0.18215 for the KL-f8 VAE);
  `latent_scale_from_data` sets `latent_scale` to 1 / std of the cached posterior means.
- whitening (`latent_whiten_from_data`): `z = (latent - shift) @ matrix.T`, the ZCA
  whitening of the cached posterior means at in-brain positions, stored in
  `config.latent_whitening`. Inside the brain the latents then have zero mean, unit
  variance and uncorrelated channels, as the diffusion's Gaussian noise has. A small VAE's
  latents are far from that (offset means, unequal and strongly correlated channels), and
  then the patch classifier can tell noised positions by their channel statistics alone;
  whitened, it has to judge them against the surrounding anatomy, which is what flags a
  lesion at test time.

Both are linear, so a posterior sample is normalized exactly by normalizing the sample.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from madad_jax import diffusion
from madad_jax.core.errors import InputError


@dataclasses.dataclass(frozen=True)
class LatentNorm:
    """`to_model`: VAE latent -> diffusion latent; `from_model`: its inverse."""

    scale: float
    shift: np.ndarray | None = None  # (C,)
    matrix: np.ndarray | None = None  # (C, C)

    @classmethod
    def from_config(cls, config) -> LatentNorm:
        w = config.latent_whitening
        if len(w.matrix):
            return cls(float(config.latent_scale), np.asarray(w.shift, np.float64),
                       np.asarray(w.matrix, np.float64))
        return cls(float(config.latent_scale))

    def to_model(self, latent: jnp.ndarray) -> jnp.ndarray:
        if self.matrix is None:
            return latent * self.scale
        shift = jnp.asarray(self.shift, latent.dtype)
        return (latent - shift) @ jnp.asarray(self.matrix.T, latent.dtype)

    def from_model(self, z: jnp.ndarray) -> jnp.ndarray:
        if self.matrix is None:
            return z / self.scale
        inv = np.linalg.inv(self.matrix)
        return z @ jnp.asarray(inv.T, z.dtype) + jnp.asarray(self.shift, z.dtype)


def _brain_cells(brainmask: np.ndarray, latent_hw: tuple[int, int], threshold: float):
    """(B,h,w) bool: latent positions that the diffusion treats as inside the brain."""
    out = diffusion.outside_brain(jnp.asarray(brainmask, jnp.float32), latent_hw, threshold)
    return ~np.asarray(out)


def stats_from_cache(directory: str, brain_threshold: float = 0.9,
                     batch: int = 256) -> dict[str, Any]:
    """One pass over a latent cache: the scalar std of every posterior mean, and the mean
    and covariance of the means at in-brain positions (the positions the diffusion may
    noise: brain coverage >= `brain_threshold`, as `diffusion.brain_threshold`).

    Returns dict(std, mean (C,), cov (C,C), n_brain).
    """
    from madad_jax.data import records

    shards, _ = records.resolve_shards(directory, "train")
    total, total_sq, n = 0.0, 0.0, 0
    s1, s2, nb = None, None, 0
    means, masks = [], []

    def flush() -> None:
        nonlocal s1, s2, nb
        if not means:
            return
        m = np.stack(means).astype(np.float64)
        cells = m[_brain_cells(np.stack(masks), m.shape[1:3], brain_threshold)]
        s1 = cells.sum(0) if s1 is None else s1 + cells.sum(0)
        s2 = cells.T @ cells if s2 is None else s2 + cells.T @ cells
        nb += len(cells)
        means.clear()
        masks.clear()

    for path in shards:
        for r in records.read_shard(path):
            m = np.asarray(r["latent_mean"], np.float64)
            total, total_sq, n = total + m.sum(), total_sq + (m * m).sum(), n + m.size
            means.append(m)
            masks.append(np.asarray(r["brainmask"], np.float32))
            if len(means) == batch:
                flush()
    flush()
    if n == 0:
        raise InputError(f"{directory}: the latent cache holds no slices")
    if nb < 2:
        raise InputError(f"{directory}: fewer than 2 in-brain latent positions to whiten")
    mean = s1 / nb
    cov = s2 / nb - np.outer(mean, mean)
    var = total_sq / n - (total / n) ** 2
    return dict(std=math.sqrt(max(var, 1e-12)), mean=mean, cov=cov, n_brain=nb)


def zca(mean: np.ndarray, cov: np.ndarray, eps: float = 1e-6) -> dict[str, tuple]:
    """ZCA whitening (shift, matrix) for data of this mean and covariance, as tuples."""
    w, v = np.linalg.eigh(cov)
    matrix = v @ np.diag(1.0 / np.sqrt(np.maximum(w, 0.0) + eps)) @ v.T
    return dict(shift=tuple(float(x) for x in mean),
                matrix=tuple(tuple(float(x) for x in row) for row in matrix))
