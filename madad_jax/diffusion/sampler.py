"""One mask-guided DDIM step (METHOD.md, "Inference") and its respaced tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from madad_jax import diffusion
from madad_jax.models.adapters import denoiser_fn


def ddim_tables(num_steps: int, ddim_steps: int) -> dict[str, jax.Array]:
    """Per respaced step i the model's timestep and the DDIM coefficients, as float32.

    The reference gathers each coefficient from float64 tables and casts it to float32.
    """
    s = diffusion.ddim_schedule(num_steps, ddim_steps)
    out = {k: jnp.asarray(v, jnp.float32) for k, v in s.items() if k != "timestep_map"}
    out["timestep_map"] = jnp.asarray(s["timestep_map"], jnp.int32)
    return out


def ddim_step(
    apply_fn: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    params: Any,
    z: jax.Array,
    i: jax.Array,
    key: jax.Array,
    tables: dict[str, jax.Array],
    eta: float,
    flag_threshold: float = 0.5,
) -> dict[str, jax.Array]:
    """One mask-guided DDIM step from respaced step `i` to `i - 1`.

    Returns the next latent `z`, the model's `x0_hat`, `p_clean` (B,h,w,1) and `flagged`
    (P(clean) < `flag_threshold`, 0.5 in the reference: the positions this step changed).
    """
    b = z.shape[0]
    t = jnp.broadcast_to(tables["timestep_map"][i], (b,))
    x0_hat, logit = apply_fn(params, z, t)
    x0_hat = x0_hat.astype(jnp.float32)
    p_clean = jax.nn.sigmoid(logit.astype(jnp.float32))
    ab, ab_prev = tables["alphas_cumprod"][i], tables["alphas_cumprod_prev"][i]
    eps = (tables["sqrt_recip_alphas_cumprod"][i] * z - x0_hat) / tables[
        "sqrt_recipm1_alphas_cumprod"
    ][i]
    sigma = eta * jnp.sqrt((1 - ab_prev) / (1 - ab)) * jnp.sqrt(1 - ab / ab_prev)
    cand = x0_hat * jnp.sqrt(ab_prev) + jnp.sqrt(jnp.maximum(1 - ab_prev - sigma**2, 0.0)) * eps
    if not isinstance(eta, (int, float)) or eta:  # a traced eta always draws the noise
        noise = jax.random.normal(key, z.shape, z.dtype)
        cand = cand + jnp.where(i != 0, sigma, 0.0) * noise
    flagged = p_clean < flag_threshold
    return dict(z=jnp.where(flagged, cand, z), x0_hat=x0_hat, p_clean=p_clean, flagged=flagged)


def make_step_fn(denoiser, config) -> Callable[..., dict[str, jax.Array]]:
    """Jitted `step(denoiser_params, z, i, key) -> ddim_step(...)` for `config.sample`."""
    tables = ddim_tables(config.diffusion.num_steps, config.sample.ddim_steps)
    apply_fn = denoiser_fn(denoiser)
    eta = float(config.sample.eta)
    thr = float(config.sample.flag_threshold)

    @jax.jit
    def step(params, z, i, key):
        return ddim_step(apply_fn, params, z, jnp.asarray(i), key, tables, eta, thr)

    return step
