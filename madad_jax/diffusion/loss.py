"""The joint loss: x0 reconstruction plus the patch-noise classifier's mask term.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from madad_jax.diffusion.masks import q_sample, sample_clean_mask


def mask_loss(clean_logit: jax.Array, clean: jax.Array, kind: str = "mse") -> jax.Array:
    """MSE between the mask and P(clean) (reference code) or BCE on the logits (paper)."""
    logit = clean_logit.astype(jnp.float32)
    if kind == "mse":
        return jnp.mean((clean - jax.nn.sigmoid(logit)) ** 2)
    if kind == "bce":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logit, clean))
    raise ValueError(f"unknown diffusion.mask_loss {kind!r} (mse | bce)")


def loss_fn(
    apply_fn: Callable[..., tuple[jax.Array, jax.Array]],
    params: Any,
    z0: jax.Array,
    brainmask: jax.Array | None,
    key: jax.Array,
    config,
    train: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The joint loss `MSE(x0) + w * mask_loss` on one batch of clean latents z0 (B,h,w,C).

    `apply_fn(params, z_t, t, train, rngs)` returns `(x0_hat, clean_logit)`.
    """
    dcfg = config.diffusion
    b, h, w, _ = z0.shape
    k_t, k_m, k_n, k_d = jax.random.split(key, 4)
    t = jax.random.randint(k_t, (b,), 0, dcfg.num_steps)
    clean = sample_clean_mask(k_m, b, (h, w), dcfg, brainmask)
    noise = jax.random.normal(k_n, z0.shape, z0.dtype)
    z_t = q_sample(z0, t, clean, noise, dcfg.num_steps)
    x0_hat, logit = apply_fn(params, z_t, t, train, {"dropout": k_d})
    mse = jnp.mean((z0 - x0_hat.astype(jnp.float32)) ** 2)
    m_loss = mask_loss(logit, clean, dcfg.mask_loss)
    loss = mse + dcfg.mask_loss_weight * m_loss
    aux = dict(
        loss=loss,
        mse=mse,
        mask_loss=m_loss,
        mask_acc=jnp.mean((logit > 0) == (clean > 0.5)),
        noised_frac=1.0 - jnp.mean(clean),
    )
    return loss, aux
