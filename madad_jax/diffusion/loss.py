"""The joint loss: x0 reconstruction plus the patch-noise classifier's mask term.

`loss_fn` is `draw` (the random part: timesteps, clean mask, noise) followed by
`compute_loss` (everything else, deterministic given the draws), so a test can feed the
reference's recorded draws through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from madad_jax.diffusion.masks import q_sample, sample_clean_mask


class Draws(NamedTuple):
    """One batch's random draws: timesteps (B,), clean mask (B,h,w,1), noise like z0."""

    t: jax.Array
    clean: jax.Array
    noise: jax.Array


def _mask_terms(clean_logit: jax.Array, clean: jax.Array, kind: str) -> jax.Array:
    logit = clean_logit.astype(jnp.float32)
    if kind == "mse":
        return (clean - jax.nn.sigmoid(logit)) ** 2
    if kind == "bce":
        return optax.sigmoid_binary_cross_entropy(logit, clean)
    raise ValueError(f"unknown diffusion.mask_loss {kind!r} (mse | bce)")


def mask_loss(clean_logit: jax.Array, clean: jax.Array, kind: str = "mse") -> jax.Array:
    """MSE between the mask and P(clean) (reference code) or BCE on the logits (paper)."""
    return jnp.mean(_mask_terms(clean_logit, clean, kind))


def draw(key: jax.Array, z0: jax.Array, brainmask: jax.Array | None,
         dcfg, alt: jax.Array | None = None) -> tuple[Draws, jax.Array]:
    """The batch's draws from `key`, and the key left for dropout (`alt`: see
    `draw_noise`)."""
    b, h, w, _ = z0.shape
    k_t, k_m, k_n, k_d = jax.random.split(key, 4)
    t = jax.random.randint(k_t, (b,), 0, dcfg.num_steps)
    clean = sample_clean_mask(k_m, b, (h, w), dcfg, brainmask)
    noise = draw_noise(k_n, z0, dcfg, alt)
    return Draws(t, clean, noise), k_d


NOISES = ("gaussian", "latent_swap")


def draw_noise(key: jax.Array, z0: jax.Array, dcfg, alt: jax.Array | None = None) -> jax.Array:
    """The forward process's noise for a batch of clean latents z0 (B,h,w,C).

    "gaussian" (the reference): N(0, I). "latent_swap": for a fraction `swap_prob` of the
    samples, the noise is instead real (normalized) latent content from elsewhere: another
    sample of the batch, shifted by a random offset. At high t a noised patch then holds
    plausible latent values at the wrong place, so the mask head must judge each position
    against its anatomy rather than by its noise statistics, as it must on a lesion.
    With `alt` (B,h,w,C), the normalized latents of the same slices with their tissue
    contrast changed, a fraction `contrast_swap_prob` of the swapped samples take `alt` at
    the very same positions instead: the right anatomy in the wrong intensity.
    """
    gauss = jax.random.normal(key, z0.shape, z0.dtype)
    kind = dcfg.get("noise", "gaussian")
    if kind == "gaussian":
        return gauss
    k_b, k_h, k_w, k_p = jax.random.split(jax.random.fold_in(key, 1), 4)
    if kind != "latent_swap":
        raise ValueError(f"unknown diffusion.noise {kind!r}; expected one of {NOISES}")
    b, h, w, _ = z0.shape
    other = jnp.roll(z0, jax.random.randint(k_b, (), 1, max(b, 2)), axis=0)
    other = jnp.roll(other, (jax.random.randint(k_h, (), 0, h),
                             jax.random.randint(k_w, (), 0, w)), axis=(1, 2))
    u = jax.random.uniform(k_p, (b, 1, 1, 1))
    swap_p = float(dcfg.get("swap_prob", 0.5))
    swap = u < swap_p
    contrast_p = float(dcfg.get("contrast_swap_prob", 0.0))
    if alt is not None and contrast_p > 0:
        # u < swap_p * contrast_p: the contrast-changed latent; then another slice's.
        other = jnp.where(u < swap_p * contrast_p, alt.astype(other.dtype), other)
    return jnp.where(swap, other.astype(z0.dtype), gauss)


def predict(apply_fn: Callable[..., tuple[jax.Array, jax.Array]], params: Any, z0: jax.Array,
            draws: Draws, num_steps: int, train: bool,
            dropout_key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(z_t, x0_hat, clean_logit)`: the noised latent and the model's two outputs on it."""
    z_t = q_sample(z0, draws.t, draws.clean, draws.noise, num_steps)
    x0_hat, logit = apply_fn(params, z_t, draws.t, train, {"dropout": dropout_key})
    return z_t, x0_hat, logit


def per_sample_losses(z0: jax.Array, x0_hat: jax.Array, logit: jax.Array, clean: jax.Array,
                      dcfg) -> dict[str, jax.Array]:
    """(B,) `mse`, `mask_loss` and `loss = mse + w * mask_loss`, each a mean over one sample."""
    axes = tuple(range(1, z0.ndim))
    mse = jnp.mean((z0 - x0_hat.astype(jnp.float32)) ** 2, axis=axes)
    m_loss = jnp.mean(_mask_terms(logit, clean, dcfg.mask_loss), axis=axes)
    return dict(loss=mse + dcfg.mask_loss_weight * m_loss, mse=mse, mask_loss=m_loss)


def compute_loss(
    apply_fn: Callable[..., tuple[jax.Array, jax.Array]],
    params: Any,
    z0: jax.Array,
    draws: Draws,
    config,
    train: bool = True,
    dropout_key: jax.Array | None = None,
    weight: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The joint loss `MSE(x0) + w * mask_loss` given the batch's draws (means over the batch).

    With `weight` (B,) the means are over the samples of weight 1 only: a padded partial
    batch (exact epochs) then gives the loss and gradients of its real samples alone.
    """
    dcfg = config.diffusion
    if dropout_key is None:
        dropout_key = jax.random.key(0)
    _, x0_hat, logit = predict(apply_fn, params, z0, draws, dcfg.num_steps, train, dropout_key)
    clean = draws.clean
    if weight is None:
        mse = jnp.mean((z0 - x0_hat.astype(jnp.float32)) ** 2)
        m_loss = mask_loss(logit, clean, dcfg.mask_loss)
        acc = jnp.mean((logit > 0) == (clean > 0.5))
        noised = 1.0 - jnp.mean(clean)
    else:
        per = per_sample_losses(z0, x0_hat, logit, clean, dcfg)
        w = weight.astype(jnp.float32)
        denom = jnp.maximum(jnp.sum(w), 1.0)

        def wmean(x):  # (B, ...) -> the mean over the real samples
            per_sample = jnp.mean(x.astype(jnp.float32), axis=tuple(range(1, x.ndim)))
            return jnp.sum(w * per_sample) / denom

        mse, m_loss = wmean(per["mse"][:, None]), wmean(per["mask_loss"][:, None])
        acc, noised = wmean((logit > 0) == (clean > 0.5)), 1.0 - wmean(clean)
    loss = mse + dcfg.mask_loss_weight * m_loss
    aux = dict(loss=loss, mse=mse, mask_loss=m_loss, mask_acc=acc, noised_frac=noised)
    return loss, aux


def loss_fn(
    apply_fn: Callable[..., tuple[jax.Array, jax.Array]],
    params: Any,
    z0: jax.Array,
    brainmask: jax.Array | None,
    key: jax.Array,
    config,
    train: bool = True,
    weight: jax.Array | None = None,
    alt: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The joint loss on one batch of clean latents z0 (B,h,w,C): `draw`, then `compute_loss`.

    `apply_fn(params, z_t, t, train, rngs)` returns `(x0_hat, clean_logit)`; `weight` (B,)
    marks the real samples of a padded batch.
    """
    draws, k_d = draw(key, z0, brainmask, config.diffusion, alt)
    return compute_loss(apply_fn, params, z0, draws, config, train, k_d, weight)
