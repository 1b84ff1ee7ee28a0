"""Networks: the KL autoencoder and the denoisers (UNet, DiT), built from a full config.

The names below load on first use, so that `models.presets` (imported by `madad_jax.config`)
does not pull in JAX and Flax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from madad_jax.models.build import (
        UNET_KEYS,
        VAE_KEYS,
        build_denoiser,
        build_vae,
        unet_kwargs,
        vae_kwargs,
    )
    from madad_jax.models.unet import UNet
    from madad_jax.models.vae import AutoencoderKL, sample_posterior

_HOMES = {
    "AutoencoderKL": "vae", "sample_posterior": "vae", "UNet": "unet",
    "UNET_KEYS": "build", "VAE_KEYS": "build", "build_denoiser": "build", "build_vae": "build",
    "unet_kwargs": "build", "vae_kwargs": "build",
}

__all__ = ["AutoencoderKL", "UNET_KEYS", "UNet", "VAE_KEYS", "build_denoiser", "build_vae",
           "sample_posterior", "unet_kwargs", "vae_kwargs"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
