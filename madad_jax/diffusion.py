"""Masked latent diffusion: noise schedule, respacing, patch clean-masks and the joint loss.

Schedules are computed in float64 with numpy at trace time and enter the jitted code as
float32 constants, as the reference does (it builds its tables in float64 and casts each
gathered coefficient to float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

# ----------------------------------------------------------------------------- schedules


def betas_for_alpha_bar(
    num_steps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Betas discretizing a continuous alpha_bar(t), t in [0, 1], in float64."""
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
        for i in range(num_steps)
    ]
    return np.asarray(betas, dtype=np.float64)


def cosine_betas(num_steps: int) -> np.ndarray:
    """The "squaredcos_cap_v2" schedule of improved DDPM."""
    return betas_for_alpha_bar(
        num_steps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    )


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    return np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))


def space_timesteps(num_steps: int, section_counts: str | Sequence[int]) -> set[int]:
    """The original steps kept by a respaced process.

    `section_counts` is either "ddimN" (the DDIM paper's fixed integer stride: the first
    stride k with len(range(0, T, k)) == N), or a list / comma-separated string of step counts
    per equal section of [0, T), each section strided evenly with rounding.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            want = int(section_counts[len("ddim") :])
            for stride in range(1, num_steps):
                if len(range(0, num_steps, stride)) == want:
                    return set(range(0, num_steps, stride))
            raise ValueError(
                f"cannot take exactly {want} of {num_steps} steps with an integer stride"
            )
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per, extra = divmod(num_steps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return set(steps)


def ddim_timesteps(num_steps: int, ddim_steps: int) -> set[int]:
    """The steps the reference keeps for `ddim_steps` sampling steps ("ddim{S}" respacing).

    The reference only accepts S reachable by an integer stride (for T=10: 1..5 via strides
    and 10). Any other S falls back to the evenly rounded single-section spacing, which
    keeps both ends of [0, T-1].
    """
    if not 1 <= ddim_steps <= num_steps:
        raise ValueError(f"ddim_steps must be in [1, {num_steps}], got {ddim_steps}")
    try:
        return space_timesteps(num_steps, f"ddim{ddim_steps}")
    except ValueError:
        return space_timesteps(num_steps, [ddim_steps])


def respace(
    base_alphas_cumprod: np.ndarray, use_timesteps: set[int]
) -> tuple[np.ndarray, np.ndarray]:
    """`(timestep_map, alphas_cumprod)` of the process restricted to `use_timesteps`.

    Like the reference's SpacedDiffusion: new betas 1 - ab_k / ab_prev_kept, then their
    cumulative product (float64).
    """
    last, new_betas, tmap = 1.0, [], []
    for i, ab in enumerate(base_alphas_cumprod):
        if i in use_timesteps:
            new_betas.append(1.0 - ab / last)
            last = ab
            tmap.append(i)
    return np.asarray(tmap, dtype=np.int32), alphas_cumprod(np.asarray(new_betas))


def ddim_schedule(num_steps: int, ddim_steps: int) -> dict[str, np.ndarray]:
    """Per respaced step i (0..S-1) the float64 tables the DDIM update needs."""
    base = alphas_cumprod(cosine_betas(num_steps))
    tmap, ab = respace(base, ddim_timesteps(num_steps, ddim_steps))
    ab_prev = np.append(1.0, ab[:-1])
    return dict(
        timestep_map=tmap,
        alphas_cumprod=ab,
        alphas_cumprod_prev=ab_prev,
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ab),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ab - 1.0),
    )


# ------------------------------------------------------------------------- clean masks


def _patch_mask(key: jax.Array, frac_noised: jax.Array, h: int, w: int, ph: int, pw: int):
    """(B,h,w) clean mask: per sample floor(N*(1-r)) of the N patches of size ph x pw are 1."""
    b = frac_noised.shape[0]
    gh, gw = h // ph, w // pw
    n = gh * gw
    scores = jax.random.uniform(key, (b, n))
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)  # a random permutation per sample
    n_clean = jnp.floor(n * (1.0 - frac_noised)).astype(jnp.int32)
    grid = (rank < n_clean[:, None]).astype(jnp.float32).reshape(b, gh, gw)
    return jnp.repeat(jnp.repeat(grid, ph, axis=1), pw, axis=2)


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
        mask = jnp.where(outside_brain(brainmask, latent_hw, dcfg.brain_threshold), 1.0, mask)
    if return_info:
        patch_hw = jnp.stack([jnp.asarray(sizes)[ih], jnp.asarray(sizes)[iw]])
        return mask[..., None], dict(patch_hw=patch_hw, frac=frac)
    return mask[..., None]


# ------------------------------------------------------------------ forward process + loss


def q_sample(z0: jax.Array, t: jax.Array, clean: jax.Array, noise: jax.Array, num_steps: int):
    """Masked forward process: clean positions keep z0, the rest follow q(z_t | z0)."""
    ab = alphas_cumprod(cosine_betas(num_steps))
    sa = jnp.asarray(np.sqrt(ab), jnp.float32)[t][:, None, None, None]
    s1 = jnp.asarray(np.sqrt(1.0 - ab), jnp.float32)[t][:, None, None, None]
    return clean * z0 + (1.0 - clean) * (sa * z0 + s1 * noise)


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
