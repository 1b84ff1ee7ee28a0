"""The one way the rest of the code calls the networks: VAE encode / decode and the denoiser.

Flax modules are applied as `module.apply({"params": p}, ..., method=...)`; these adapters
keep that spelling in one place, so training, the latent cache, sampling and the benchmarks
call the models the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

DenoiserFn = Callable[..., tuple[jax.Array, jax.Array]]


def vae_encode(vae, params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The posterior `(mean, logvar)` of (B,H,W,C) images in [-1, 1]."""
    return vae.apply({"params": params}, images, method=vae.encode)


def vae_decode(vae, params: Any, latents: jax.Array) -> jax.Array:
    """(B,H,W,C) images from VAE latents (not normalized for the diffusion)."""
    return vae.apply({"params": params}, latents, method=vae.decode)


def denoiser_fn(model) -> DenoiserFn:
    """`apply(params, z_t, t, train=False, rngs=None) -> (x0_hat, clean_logit)`."""

    def apply(params: Any, z_t: jax.Array, t: jax.Array, train: bool = False,
              rngs: dict[str, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
        return model.apply({"params": params}, z_t, t, train, rngs=rngs)

    return apply
