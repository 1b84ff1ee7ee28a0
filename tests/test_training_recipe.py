"""The reference's training recipe: padded partial batches weigh only their real samples."""

import jax
import jax.numpy as jnp
import numpy as np
from train_helpers import tiny_config

from madad_jax import diffusion
from madad_jax.diffusion.loss import Draws, compute_loss
from madad_jax.models import build_denoiser
from madad_jax.models.adapters import denoiser_fn


def _setup():
    c = tiny_config()
    c.model.unet.dropout = 0.0
    model = build_denoiser(c)
    z0 = jax.random.normal(jax.random.key(1), (4, 16, 16, 4))
    params = model.init(jax.random.key(0), z0, jnp.zeros((4,), jnp.int32), False)["params"]
    draws, _ = diffusion.loss.draw(jax.random.key(2), z0, None, c.diffusion)
    return c, denoiser_fn(model), params, z0, draws


def test_padded_batch_loss_and_gradients_are_those_of_its_real_samples():
    c, apply_fn, params, z0, draws = _setup()
    # Rows 2 and 3 are padding: copies of row 0 with weight 0.
    padded_z0 = z0.at[2:].set(z0[:1])
    weight = jnp.array([1.0, 1.0, 0.0, 0.0])

    def padded(p):
        return compute_loss(apply_fn, p, padded_z0, draws, c, train=False, weight=weight)

    def real(p):
        d = Draws(draws.t[:2], draws.clean[:2], draws.noise[:2])
        return compute_loss(apply_fn, p, z0[:2], d, c, train=False)

    (lp, ap), gp = jax.value_and_grad(padded, has_aux=True)(params)
    (lr, ar), gr = jax.value_and_grad(real, has_aux=True)(params)
    for k in ("loss", "mse", "mask_loss", "mask_acc", "noised_frac"):
        np.testing.assert_allclose(ap[k], ar[k], rtol=1e-5, atol=1e-7)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(gr))
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gr), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_full_weights_equal_the_unweighted_loss():
    c, apply_fn, params, z0, draws = _setup()
    plain, _ = compute_loss(apply_fn, params, z0, draws, c, train=False)
    weighted, _ = compute_loss(apply_fn, params, z0, draws, c, train=False,
                               weight=jnp.ones((4,)))
    np.testing.assert_allclose(weighted, plain, rtol=1e-6, atol=1e-7)
    # ... and a zero weight really removes a sample.
    dropped, _ = compute_loss(apply_fn, params, z0, draws, c, train=False,
                              weight=jnp.array([1.0, 1.0, 1.0, 0.0]))
    assert abs(float(dropped) - float(plain)) > 1e-6
