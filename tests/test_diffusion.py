"""Schedule, respacing, patch clean-masks, masked forward process and the joint loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from madad_jax import diffusion
from madad_jax.config import default_config
from madad_jax.diffusion import masks

METHOD_ALPHAS_CUMPROD = [
    0.972093, 0.898706, 0.786911, 0.647478, 0.493844,
    0.34081, 0.203121, 0.0940456, 0.0240917, 2.40917e-5,
]


def test_cosine_schedule_numbers():
    betas = diffusion.cosine_betas(10)
    assert betas.dtype == np.float64 and betas.max() <= 0.999
    assert betas[-1] == 0.999  # the last beta is capped
    np.testing.assert_allclose(diffusion.alphas_cumprod(betas), METHOD_ALPHAS_CUMPROD, rtol=5e-6)


@pytest.mark.parametrize(
    "steps,kept",
    [(10, range(10)), (5, [0, 2, 4, 6, 8]), (2, [0, 5]), (3, [0, 4, 8]), (4, [0, 3, 6, 9])],
)
def test_ddim_respacing(steps, kept):
    sched = diffusion.ddim_schedule(10, steps)
    np.testing.assert_array_equal(sched["timestep_map"], list(kept))
    base = diffusion.alphas_cumprod(diffusion.cosine_betas(10))
    np.testing.assert_allclose(sched["alphas_cumprod"], base[list(kept)], rtol=1e-12)
    np.testing.assert_allclose(sched["alphas_cumprod_prev"][1:], sched["alphas_cumprod"][:-1])
    assert sched["alphas_cumprod_prev"][0] == 1.0


def test_space_timesteps_sections_and_fallback():
    assert diffusion.space_timesteps(10, [3]) == {0, 4, 9}  # Python rounds 4.5 to 4
    assert diffusion.space_timesteps(300, "10,15,20") == diffusion.space_timesteps(
        300, [10, 15, 20]
    )
    assert len(diffusion.space_timesteps(300, "10,15,20")) == 45
    with pytest.raises(ValueError):
        diffusion.space_timesteps(10, "ddim7")
    # Counts no integer stride reaches fall back to an even spacing with both ends.
    assert sorted(diffusion.ddim_timesteps(10, 7)) == [0, 2, 3, 4, 6, 8, 9]
    with pytest.raises(ValueError):
        diffusion.ddim_timesteps(10, 11)


def _dcfg(**kw):
    d = default_config().diffusion
    d.update(kw)
    return d


@pytest.mark.parametrize("ph,pw", [(1, 1), (2, 4), (8, 2), (8, 8)])
def test_patch_mask_structure(ph, pw):
    h = w = 16
    frac = jnp.array([0.0, 0.13, 0.27, 0.4])
    m = np.asarray(masks._patch_mask(jax.random.key(0), frac, h, w, ph, pw))
    assert m.shape == (4, h, w) and set(np.unique(m)) <= {0.0, 1.0}
    blocks = m.reshape(4, h // ph, ph, w // pw, pw)
    assert (blocks == blocks[:, :, :1, :, :1]).all()  # constant inside every patch
    n = (h // ph) * (w // pw)
    n_clean = blocks[:, :, 0, :, 0].sum(axis=(1, 2))
    np.testing.assert_array_equal(n_clean, np.floor(n * (1 - np.asarray(frac))))


def test_sample_clean_mask_properties():
    dcfg = _dcfg()
    b, h, w = 8, 32, 32
    fn = jax.jit(lambda k: diffusion.sample_clean_mask(k, b, (h, w), dcfg, return_info=True))
    seen = []
    for i in range(40):
        m, info = fn(jax.random.key(i))
        m, (ph, pw), frac = np.asarray(m), np.asarray(info["patch_hw"]), np.asarray(info["frac"])
        assert m.shape == (b, h, w, 1)
        assert (frac >= 0).all() and (frac <= 0.4).all()
        blocks = m[..., 0].reshape(b, h // ph, ph, w // pw, pw)
        assert (blocks == blocks[:, :, :1, :, :1]).all()
        n = (h // ph) * (w // pw)
        noised = 1.0 - m.mean(axis=(1, 2, 3))
        np.testing.assert_allclose(noised * n, n - np.floor(n * (1 - frac)), atol=1e-4)
        assert (noised <= 0.4 + 1.0 / n + 1e-6).all()
        seen += [int(ph), int(pw)]
    counts = np.array([seen.count(s) for s in (1, 2, 4, 8)]) / len(seen)
    assert set(seen) <= {1, 2, 4, 8}
    np.testing.assert_allclose(counts, [0.2, 0.3, 0.3, 0.2], atol=0.12)


def test_outside_brain_never_noised():
    b, img, lat = 4, 64, 8
    brain = np.zeros((b, img, img), np.float32)
    brain[:, 8:56, 12:40] = 1.0
    dcfg = _dcfg(max_noised_frac=0.4, patch_probs=(1.0, 0.0, 0.0, 0.0))
    outside = np.asarray(diffusion.outside_brain(jnp.asarray(brain), (lat, lat), 0.9))
    # reference: avgpool 16 -> 4x4 -> < 0.9 -> repeat x2
    pooled = brain.reshape(b, 4, 16, 4, 16).mean(axis=(2, 4)) < 0.9
    np.testing.assert_array_equal(outside, pooled.repeat(2, 1).repeat(2, 2))
    assert outside.any() and not outside.all()
    fn = jax.jit(lambda k: diffusion.sample_clean_mask(k, b, (lat, lat), dcfg, jnp.asarray(brain)))
    noised_any = np.zeros((b, lat, lat), bool)
    for i in range(20):
        m = np.asarray(fn(jax.random.key(i)))[..., 0]
        assert (m[outside] == 1.0).all()
        noised_any |= m == 0
    assert noised_any[~outside].any()


def test_q_sample_masked_and_same_across_channels():
    key = jax.random.key(3)
    z0 = jax.random.normal(key, (2, 8, 8, 4))
    noise = jax.random.normal(jax.random.key(4), z0.shape)
    clean = (jax.random.uniform(jax.random.key(5), (2, 8, 8, 1)) > 0.3).astype(jnp.float32)
    t = jnp.array([0, 9])
    zt = np.asarray(diffusion.q_sample(z0, t, clean, noise, 10))
    c = np.asarray(clean[..., 0]) > 0
    np.testing.assert_array_equal(zt[c], np.asarray(z0)[c])
    ab = np.asarray(METHOD_ALPHAS_CUMPROD)[[0, 9]][:, None, None, None]
    want = np.sqrt(ab) * np.asarray(z0) + np.sqrt(1 - ab) * np.asarray(noise)
    np.testing.assert_allclose(zt[~c], want[~c], rtol=1e-5, atol=1e-6)


def _loss(apply_fn, z0, brain, kind, key=0):
    cfg = default_config()
    cfg.diffusion.mask_loss = kind
    fn = jax.jit(lambda z, m, k: diffusion.loss_fn(apply_fn, None, z, m, k, cfg, train=True))
    return fn(z0, brain, jax.random.key(key))


def test_loss_hand_checked_mse_and_bce():
    z0 = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 8, 4)), jnp.float32)
    brain = jnp.ones((3, 64, 64))
    calls = []

    def zero_model(params, z_t, t, train, rngs):
        calls.append((z_t.shape, t.shape, train, sorted(rngs)))
        return jnp.zeros_like(z_t), jnp.zeros(z_t.shape[:3] + (1,))

    loss, aux = _loss(zero_model, z0, brain, "mse")
    assert calls[0] == ((3, 8, 8, 4), (3,), True, ["dropout"])
    mse = float(jnp.mean(z0**2))
    assert float(aux["mse"]) == pytest.approx(mse, rel=1e-6, abs=1e-6)
    assert float(aux["mask_loss"]) == pytest.approx(0.25, rel=1e-6)  # (m - 0.5)^2 = 0.25
    assert float(loss) == pytest.approx(mse + 0.001 * 0.25, rel=1e-6, abs=1e-6)
    loss_bce, aux_bce = _loss(zero_model, z0, brain, "bce")
    assert float(aux_bce["mask_loss"]) == pytest.approx(np.log(2.0), rel=1e-6, abs=1e-6)
    assert float(loss_bce) == pytest.approx(mse + 0.001 * np.log(2.0), rel=1e-6,
                                              abs=1e-6)
    with pytest.raises(ValueError):
        _loss(zero_model, z0, brain, "hinge")


def test_loss_mask_term_sees_the_mask():
    z0 = jnp.ones((4, 8, 8, 4))
    brain = jnp.ones((4, 64, 64))

    def confident_clean(params, z_t, t, train, rngs):
        return z_t, jnp.full(z_t.shape[:3] + (1,), 30.0)

    _, aux = _loss(confident_clean, z0, brain, "mse", key=7)
    frac = float(aux["noised_frac"])
    assert 0.0 < frac <= 1.0
    # P(clean) = 1 everywhere: the MSE term is the noised fraction, accuracy its complement
    assert float(aux["mask_loss"]) == pytest.approx(frac, rel=1e-5)
    assert float(aux["mask_acc"]) == pytest.approx(1.0 - frac, rel=1e-5)
