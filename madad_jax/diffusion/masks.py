"""Patch clean-masks: which latent positions a training sample noises, and the forward process.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from madad_jax.diffusion.schedule import alphas_cumprod, cosine_betas


def _patch_mask(key: jax.Array, frac_noised: jax.Array, h: int, w: int, ph: int, pw: int):
    """(B,h,w) clean mask: per sample floor(N*(1-r)) of the N patches of size ph x pw are 1."""
    b = frac_noised.shape[0]
    gh, gw = h // ph, w // pw
    n = gh * gw
    scores = jax.random.uniform(key, (b, n))
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)  # a random permutation per sample
    n_clean = jnp.floor(n * (1.0 - frac_noised)).astype(jnp.int32)
    grid = (rank < n_clean[:, None]).astype(jnp.float32).reshape(b, gh, gw)
    return patch_grid_mask(grid, ph, pw)


def patch_grid_mask(grid: jax.Array, ph: int, pw: int) -> jax.Array:
    """(B,gh,gw) per-patch values as a (B,gh*ph,gw*pw) mask: each patch ph rows x pw columns."""
    return jnp.repeat(jnp.repeat(grid, ph, axis=1), pw, axis=2)


def exclude_outside_brain(mask: jax.Array, brainmask: jax.Array, threshold: float = 0.9):
    """(B,h,w) clean mask set to 1 (clean) where `outside_brain`."""
    return jnp.where(outside_brain(brainmask, mask.shape[1:3], threshold), 1.0, mask)


def outside_brain(brainmask: jax.Array, latent_hw: tuple[int, int], threshold: float = 0.9):
    """(B,h,w) bool: latent positions whose brain coverage is below `threshold`.

    The reference average-pools the brain mask with a window twice the VAE's downsampling
    factor (16 for KL-f8) and upsamples the result x2 by repetition. When the image does not
    divide into such windows the window is the downsampling factor itself.
    """
    b, hh, ww = brainmask.shape
    h, w = latent_hw
    fh, fw = hh // h, ww // w
    if fh * h != hh or fw * w != ww:
        raise ValueError(f"brain mask {hh}x{ww} is not a multiple of the latent {h}x{w}")
    rep = 2 if (h % 2 == 0 and w % 2 == 0) else 1
    gh, gw = h // rep, w // rep
    pooled = brainmask.astype(jnp.float32).reshape(b, gh, hh // gh, gw, ww // gw).mean(axis=(2, 4))
    out = pooled < threshold
    return jnp.repeat(jnp.repeat(out, rep, axis=1), rep, axis=2)


def sample_clean_mask(
    key: jax.Array,
    batch: int,
    latent_hw: tuple[int, int],
    dcfg,
    brainmask: jax.Array | None = None,
    return_info: bool = False,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """(B,h,w,1) float mask, 1 = clean, 0 = noised; shared by all latent channels.

    One patch height and one patch width are drawn for the whole batch (independently, from
    `dcfg.patch_sizes` with `dcfg.patch_probs`); each sample noises a fraction
    r ~ U(0, max_noised_frac) of its patches. Positions outside the brain are set clean.
    Patch sizes that do not divide the latent are dropped (probabilities renormalized).
    With `return_info` also returns the drawn `patch_hw` (2,) and per-sample `frac` (B,).
    """
    h, w = latent_hw
    sizes = np.asarray(dcfg.patch_sizes, dtype=np.int64)
    probs = np.asarray(dcfg.patch_probs, dtype=np.float64)
    k_h, k_w, k_r, k_m = jax.random.split(key, 4)

    def choose(k, dim):
        ok = (dim % sizes) == 0
        if not ok.any():
            raise ValueError(f"no patch size in {tuple(sizes)} divides {dim}")
        p = np.where(ok, probs, 0.0)
        return jax.random.choice(k, len(sizes), p=jnp.asarray(p / p.sum(), jnp.float32))

    ih, iw = choose(k_h, h), choose(k_w, w)
    frac = jax.random.uniform(k_r, (batch,), maxval=float(dcfg.max_noised_frac))

    def branch(ph, pw):
        if h % ph or w % pw:  # unreachable: its probability is 0
            return lambda: jnp.ones((batch, h, w), jnp.float32)
        return lambda: _patch_mask(k_m, frac, h, w, int(ph), int(pw))

    branches = [branch(ph, pw) for ph in sizes for pw in sizes]
    mask = jax.lax.switch(ih * len(sizes) + iw, branches)
    if brainmask is not None:
        mask = exclude_outside_brain(mask, brainmask, dcfg.brain_threshold)
    if return_info:
        patch_hw = jnp.stack([jnp.asarray(sizes)[ih], jnp.asarray(sizes)[iw]])
        return mask[..., None], dict(patch_hw=patch_hw, frac=frac)
    return mask[..., None]


def q_sample(z0: jax.Array, t: jax.Array, clean: jax.Array, noise: jax.Array, num_steps: int):
    """Masked forward process: clean positions keep z0, the rest follow q(z_t | z0)."""
    ab = alphas_cumprod(cosine_betas(num_steps))
    sa = jnp.asarray(np.sqrt(ab), jnp.float32)[t][:, None, None, None]
    s1 = jnp.asarray(np.sqrt(1.0 - ab), jnp.float32)[t][:, None, None, None]
    return clean * z0 + (1.0 - clean) * (sa * z0 + s1 * noise)
