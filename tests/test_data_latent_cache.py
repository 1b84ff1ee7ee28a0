"""The latent cache: posterior moments stored beside the slices and fed by the pipeline."""

import os

import numpy as np
from data_helpers import tiny_vae_slices

from madad_jax.data import pipeline
from madad_jax.training.latent_cache import build_latent_cache

SIZE = 16


def test_latent_cache(tmp_path):
    c, encode = tiny_vae_slices(tmp_path, SIZE)

    m = build_latent_cache(tmp_path / "slices", tmp_path / "cache", encode, encoder_id="v1",
                           progress=False)
    slices = pipeline.load_eval_split(tmp_path / "slices", "train")
    cache = pipeline.load_eval_split(tmp_path / "cache", "train")
    assert m["num_records"] == len(slices["names"])
    np.testing.assert_array_equal(cache["images"], slices["images"])
    assert cache["latent_mean"].shape == (len(slices["names"]), SIZE // 2, SIZE // 2, 4)
    # Each slice carries its own moments (batching and padding do not mix them up).
    mean, logvar = encode(slices["images"][3:6])
    np.testing.assert_allclose(cache["latent_mean"][3:6], mean, atol=1e-6)
    np.testing.assert_allclose(cache["latent_logvar"][3:6], logvar, atol=1e-6)
    assert np.abs(cache["latent_mean"][3] - cache["latent_mean"][4]).max() > 1e-3

    stamp = os.stat(tmp_path / "cache" / "train.manifest.json").st_mtime_ns
    build_latent_cache(tmp_path / "slices", tmp_path / "cache", encode, encoder_id="v1",
                       progress=False)
    assert os.stat(tmp_path / "cache" / "train.manifest.json").st_mtime_ns == stamp

    c.data.latent_cache = str(tmp_path / "cache")
    c.train.batch_size = 4
    batch = next(pipeline.train_iterator(c, 0, 1))
    assert set(batch) == {"image", "brainmask", "latent_mean", "latent_logvar"}
    assert batch["latent_mean"].shape == (4, SIZE // 2, SIZE // 2, 4)
    # No augmentation with a cache: every image is one of the cached slices, unchanged.
    cached = {img.tobytes(): i for i, img in enumerate(cache["images"])}
    for img, lat in zip(batch["image"], batch["latent_mean"], strict=True):
        np.testing.assert_array_equal(lat, cache["latent_mean"][cached[img.tobytes()]])
