"""The training levers for unseen anatomy: contrast-changed latents in the cache and the
noise, train-only anatomy variation with tissue randomization, and cross-slice smoothing."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from data_helpers import tiny_vae_slices

from madad_jax.data import pipeline
from madad_jax.data.augment import CONTRAST_CHANGES, contrast_changed
from madad_jax.data.synthetic import anatomy, subjects
from madad_jax.diffusion.loss import draw_noise
from madad_jax.evaluation.predict import smooth_across_slices
from madad_jax.training.latent_cache import CONTRAST_MEAN, build_latent_cache


def test_contrast_change_keeps_outside_and_changes_every_brain_pixel():
    rng = np.random.default_rng(0)
    img = np.full((16, 16, 1), -1.0, np.float32)
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 4:12] = 1
    img[4:12, 4:12, 0] = 0.4
    seen = set()
    for _ in range(30):
        out = contrast_changed(img, mask[..., None], rng)
        assert out.shape == img.shape and np.all(out[mask == 0] == -1.0)
        u = (out[mask > 0] + 1) / 2 / 0.7
        if np.allclose(u, u[0]):
            lo, hi = (CONTRAST_CHANGES["bright"] if u[0] > 1 else CONTRAST_CHANGES["dark"])
            assert lo - 1e-5 <= u[0] <= hi + 1e-5
            seen.add("bright" if u[0] > 1 else "dark")
        else:
            seen.add("texture")
    assert seen == set(CONTRAST_CHANGES)


def test_contrast_swap_takes_alt_at_the_same_place():
    z0 = jnp.zeros((256, 2, 2, 1))
    alt = jnp.full((256, 2, 2, 1), 7.0)
    dcfg = ml_collections.ConfigDict(dict(noise="latent_swap", swap_prob=1.0,
                                          contrast_swap_prob=0.5))
    n = np.asarray(draw_noise(jax.random.key(0), z0, dcfg, alt))
    from_alt = np.all(n == 7.0, axis=(1, 2, 3))
    assert 0.35 < from_alt.mean() < 0.65  # half the (all swapped) samples
    assert np.all(n[~from_alt] == 0.0)  # the others: another slice's content (all zeros)
    dcfg.contrast_swap_prob = 0.0
    assert not np.any(np.asarray(draw_noise(jax.random.key(0), z0, dcfg, alt)) == 7.0)


def test_cache_holds_contrast_latents_for_training(tmp_path):
    c, encode = tiny_vae_slices(tmp_path, 16)
    build_latent_cache(tmp_path / "slices", tmp_path / "cache", encode, encoder_id="v1",
                       progress=False, contrast_seed=0)
    c.data.latent_cache = str(tmp_path / "cache")
    c.train.batch_size = 4
    batch = next(pipeline.train_iterator(c, 0, 1))
    assert batch[CONTRAST_MEAN].shape == batch["latent_mean"].shape
    assert np.abs(batch[CONTRAST_MEAN] - batch["latent_mean"]).max() > 1e-3


def test_train_anatomy_changes_only_training_subjects():
    demo = ml_collections.ConfigDict(dict(train_anatomy=dict(tissue_prob=1.0,
                                                             blur_mm=(1.0, 2.0))))
    base = anatomy.AnatomySpec()
    spec = subjects.train_anatomy(demo, base)
    assert spec.tissue_prob == 1.0 and spec.blur_mm == (1.0, 2.0) and spec.scale == base.scale
    assert subjects.train_anatomy(ml_collections.ConfigDict(dict(train_anatomy={})),
                                  base) is base
    grid = anatomy.Grid(size=32, z_mm=(10.0, 16.0))
    a = subjects.make_subject(0, "train", 0, grid, base, None)
    b = subjects.make_subject(0, "train", 0, grid, spec, None)
    assert np.array_equal(a.brainmask, b.brainmask)  # the same anatomy ...
    assert np.abs(a.image - b.image).mean() > 0.01  # ... in another contrast
    c = subjects.make_subject(0, "train", 0, grid, dataclasses.replace(base, tissue_prob=0.0),
                              None)
    assert np.array_equal(a.image, c.image)


def test_smoothing_across_slices_removes_stripes():
    masks = np.ones((6, 4, 4), np.float32)
    stripes = np.where(np.arange(6)[:, None, None] % 2 == 0, 1.0, 0.0) * masks
    out = smooth_across_slices(stripes, masks, list(range(6)), 1.5)
    assert np.ptp(out[1:-1]) < 0.2 * np.ptp(stripes)
    flat = smooth_across_slices(np.full((6, 4, 4), 0.3, np.float32), masks, list(range(6)), 2)
    assert np.abs(flat - 0.3).max() < 1e-6  # edges are not diluted by the empty outside
