"""The networks built from a full config: `build_vae`, `build_denoiser` and their arguments."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from madad_jax.models.layers import attention_impl, parse_dtype, resolve_precision
from madad_jax.models.unet import UNet
from madad_jax.models.vae import AutoencoderKL

VAE_KEYS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "double_z",
            "in_channels", "out_ch", "resolution", "dropout", "embed_dim")
UNET_KEYS = ("model_channels", "num_res_blocks", "attention_resolutions", "channel_mult",
             "num_heads", "in_channels", "out_channels", "dropout")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        return cfg[key]
    except (KeyError, AttributeError):
        return default


def vae_kwargs(vae_cfg: Any) -> dict[str, Any]:
    """The `AutoencoderKL` arguments (ddconfig + embed_dim) from `config.vae`."""
    out = {k: vae_cfg[k] for k in VAE_KEYS}
    out["ch_mult"] = tuple(out["ch_mult"])
    out["attn_resolutions"] = tuple(out["attn_resolutions"])
    return out


def unet_kwargs(unet_cfg: Any) -> dict[str, Any]:
    """The `UNet` arguments from `config.model.unet`."""
    out = {k: unet_cfg[k] for k in UNET_KEYS}
    out["channel_mult"] = tuple(out["channel_mult"])
    out["attention_resolutions"] = tuple(out["attention_resolutions"])
    return out


def build_vae(config: Any, dtype: str | None = None) -> AutoencoderKL:
    """The autoencoder of `config.vae`; float32 compute unless `dtype` says otherwise.

    `config.model.attention` and `config.model.precision` (optional, default "auto") apply.
    """
    m = _get(config, "model")
    dt = parse_dtype(dtype or "float32")
    return AutoencoderKL(**vae_kwargs(config.vae), dtype=dt,
                         attention=attention_impl(_get(m, "attention", "auto")),
                         precision=resolve_precision(_get(m, "precision", "auto"), dt))


def build_denoiser(config: Any) -> nn.Module:
    """The denoiser named by `config.model.name` ("unet" or "dit").

    Both are called as `model.apply(params, z_t, t, train, rngs=...)` and return
    `(x0_hat, clean_logit)`. `config.model.dtype` is the compute dtype (params stay float32),
    `config.model.attention` the attention implementation ("auto" | "xla" | "cudnn") and the
    optional `config.model.precision` the matmul precision ("auto": exact float32 for float32
    compute, see `layers.resolve_precision`).
    """
    m = config.model
    dtype = parse_dtype(_get(m, "dtype", "float32"))
    attention = attention_impl(_get(m, "attention", "auto"))
    if m.name == "unet":
        precision = resolve_precision(_get(m, "precision", "auto"), dtype)
        return UNet(**unet_kwargs(m.unet), dtype=dtype, attention=attention, precision=precision)
    if m.name == "dit":
        from madad_jax.models.dit import DiT

        return DiT(**m.dit, dtype=dtype, attention=attention)
    raise ValueError(f"unknown config.model.name {m.name!r}; expected 'unet' or 'dit'")
