"""Gaussian smoothing of 2D maps equal to `scipy.ndimage.gaussian_filter(..., mode='reflect')`.

The filter is linear and separable, so along each axis it is a fixed (n, n) matrix. We build
that matrix once with scipy itself (filtering the identity), which reproduces scipy's
boundary handling for any size, and apply it inside jit as two matmuls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage


@functools.lru_cache(maxsize=32)
def gaussian_matrix(
    n: int, sigma: float, truncate: float = 4.0, mode: str = "reflect"
) -> np.ndarray:
    """(n, n) float64 matrix G with G @ x == gaussian_filter1d(x, sigma, axis=0)."""
    eye = np.eye(n, dtype=np.float64)
    g = ndimage.gaussian_filter1d(eye, sigma, axis=0, mode=mode, truncate=truncate)
    g.setflags(write=False)
    return g


def gaussian_filter_2d(
    x: jax.Array, sigma: float, truncate: float = 4.0, mode: str = "reflect"
) -> jax.Array:
    """Smooth the last two axes of `x` (..., H, W); sigma 0 returns `x` unchanged."""
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    gh = jnp.asarray(gaussian_matrix(h, float(sigma), float(truncate), mode), jnp.float32)
    gw = jnp.asarray(gaussian_matrix(w, float(sigma), float(truncate), mode), jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("ij,...jw->...iw", gh, x.astype(jnp.float32), precision=hi)
    return jnp.einsum("...hj,wj->...hw", y, gw, precision=hi)
