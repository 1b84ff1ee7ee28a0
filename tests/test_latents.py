"""Latent normalization: the reference's scale, and whitening from a latent cache."""

import jax
import jax.numpy as jnp
import numpy as np
from data_helpers import tiny_vae_slices

from madad_jax.config import default_config
from madad_jax.data import pipeline
from madad_jax.diffusion import latent_norm as latents
from madad_jax.models.arch import apply_arch, arch_from_config
from madad_jax.training import denoiser as denoiser_task
from madad_jax.training import plan
from madad_jax.training.latent_cache import build_latent_cache

SIZE = 16


def _cache(tmp_path):
    c, encode = tiny_vae_slices(tmp_path, SIZE)
    build_latent_cache(tmp_path / "slices", tmp_path / "cache", encode, encoder_id="v1",
                       progress=False)
    return c, pipeline.load_eval_split(tmp_path / "cache", "train")


def test_stats_and_whitening_from_cache(tmp_path):
    c, cache = _cache(tmp_path)
    means = cache["latent_mean"].astype(np.float64)
    # Streamed in batches of 3 (several partial sums) == computed at once.
    stats = latents.stats_from_cache(str(tmp_path / "cache"), 0.9, batch=3)
    np.testing.assert_allclose(stats["std"], means.std(), rtol=1e-6)
    # In-brain positions: an 8x8 latent of 16x16 slices pools the mask over 4x4 windows
    # (twice the f2 factor) and keeps cells covered >= 90 %.
    pooled = cache["brainmasks"].reshape(-1, 4, 4, 4, 4).mean(axis=(2, 4)) >= 0.9
    brain = np.repeat(np.repeat(pooled, 2, axis=1), 2, axis=2)
    cells = means[brain]
    assert 0 < len(cells) < means[..., 0].size and stats["n_brain"] == len(cells)
    np.testing.assert_allclose(stats["mean"], cells.mean(0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(stats["cov"], np.cov(cells.T, bias=True), rtol=1e-5, atol=1e-9)

    with c.unlocked():
        c.latent_whitening.update(latents.zca(stats["mean"], stats["cov"]))
    norm = latents.LatentNorm.from_config(c)
    z = np.asarray(norm.to_model(jnp.asarray(cells, jnp.float32)), np.float64)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(4), atol=1e-3)
    back = np.asarray(norm.from_model(jnp.asarray(z, jnp.float32)))
    np.testing.assert_allclose(back, cells, atol=1e-4)

    # The whitening travels with a checkpoint's arch, and a loaded config uses it.
    arch = arch_from_config(c)
    d = default_config()
    assert latents.LatentNorm.from_config(d).matrix is None
    apply_arch(d, arch)
    np.testing.assert_allclose(latents.LatentNorm.from_config(d).matrix, norm.matrix)


def test_scale_is_the_default_and_train_latents_use_the_norm():
    c = default_config()
    norm = latents.LatentNorm.from_config(c)
    assert norm.matrix is None and norm.scale == 0.18215
    x = jnp.full((1, 2, 2, 4), 2.0)
    np.testing.assert_allclose(norm.to_model(x), 2.0 * 0.18215)
    np.testing.assert_allclose(norm.from_model(norm.to_model(x)), x, rtol=1e-6)

    with c.unlocked():
        c.latent_whitening.update(shift=(1.0, 2.0, 3.0, 4.0),
                                  matrix=tuple(tuple(2.0 * (i == j) for j in range(4))
                                               for i in range(4)))
    norm = latents.LatentNorm.from_config(c)
    mean = jnp.arange(16.0).reshape(1, 2, 2, 4)
    batch = {"latent_mean": mean, "latent_logvar": jnp.full_like(mean, -60.0)}
    z0 = denoiser_task.batch_latents(None, None, batch, jax.random.key(0), norm)
    np.testing.assert_allclose(z0, 2.0 * (mean - jnp.array([1.0, 2.0, 3.0, 4.0])), atol=1e-5)


def test_resume_adopts_only_the_derived_normalization():
    white = dict(shift=[0.5] * 4, matrix=[[3.0 * (i == j) for j in range(4)] for i in range(4)])
    arch = {"latent_scale": 0.7, "latent_whitening": white}
    c = default_config()
    # neither derived from data: the config stands
    assert plan.adopted_norm(c, arch) == {}
    frozen = plan.resolved(c, plan.adopted_norm(c, arch))
    assert frozen.latent_scale == 0.18215 and latents.LatentNorm.from_config(frozen).matrix is None
    c.latent_scale_from_data = True
    frozen = plan.resolved(c, plan.adopted_norm(c, arch))
    assert frozen.latent_scale == 0.7 and latents.LatentNorm.from_config(frozen).matrix is None
    c.latent_whiten_from_data = True
    frozen = plan.resolved(c, plan.adopted_norm(c, arch))
    np.testing.assert_array_equal(latents.LatentNorm.from_config(frozen).matrix, 3.0 * np.eye(4))
    assert c.latent_scale == 0.18215 and not len(c.latent_whitening.matrix)  # never edited
