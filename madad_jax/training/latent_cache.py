"""Precomputed VAE posterior moments, so that training need not run the encoder each step.

    encode = vae_encoder(config, vae_params)
    build_latent_cache(config.data.train_path, CACHE_DIR, encode, encoder_id=CKPT_DIR)
    # then: --config.data.latent_cache=CACHE_DIR

Each output shard holds the records of one input shard plus `latent_mean` and
`latent_logvar` (h, w, embed_dim) float32, from the unaugmented slices (so a cache turns
the pipeline's augmentation off). With `contrast_seed`, also `latent_contrast_mean`: the
posterior mean of the same slice with its tissue contrast changed
(`data.augment.contrast_changed`, drawn from the seed and the slice's name). The cache is
rebuilt when the input shards or `encoder_id` change, and resumes like any conversion.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from madad_jax.data import records
from madad_jax.data.augment import contrast_changed
from madad_jax.data.shardset import Unit, write_shard_set

CONTRAST_MEAN = "latent_contrast_mean"
EncodeFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def vae_encoder(config, vae_params: Any, batch_size: int = 32) -> EncodeFn:
    """A numpy -> numpy posterior-moments function for `config.vae` with `vae_params`.

    Batches are padded to `batch_size` so that one compiled program serves all of them.
    """
    import jax

    from madad_jax.models import build_vae
    from madad_jax.models.adapters import vae_encode

    vae = build_vae(config)
    apply = jax.jit(lambda p, x: vae_encode(vae, p, x))

    def encode(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        means, logvars = [], []
        for i in range(0, len(images), batch_size):
            chunk = images[i : i + batch_size]
            pad = batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            mean, logvar = apply(vae_params, chunk)
            means.append(np.asarray(mean)[: batch_size - pad])
            logvars.append(np.asarray(logvar)[: batch_size - pad])
        return np.concatenate(means), np.concatenate(logvars)

    return encode


def _contrast_images(chunk: list[dict[str, Any]], images: np.ndarray, seed: int) -> np.ndarray:
    out = []
    for r, x in zip(chunk, images, strict=True):
        name = str(r.get("name", ""))
        digest = hashlib.sha256(name.encode()).digest()[:8]
        rng = np.random.default_rng([int(seed), int.from_bytes(digest, "little")])
        out.append(contrast_changed(x, np.asarray(r["brainmask"])[..., None], rng))
    return np.stack(out)


def _cache_records(unit: Unit, encode: EncodeFn, batch_size: int,
                   contrast_seed: int | None = None) -> list[dict[str, Any]]:
    rows = list(records.read_shard(dict(unit.inputs)["shard"]))
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        images = np.stack([np.asarray(r["image"], np.float32) for r in chunk])[..., None]
        mean, logvar = encode(images)
        for r, m, v in zip(chunk, mean, logvar, strict=True):
            r["latent_mean"] = np.asarray(m, np.float32)
            r["latent_logvar"] = np.asarray(v, np.float32)
        if contrast_seed is not None:
            alt, _ = encode(_contrast_images(chunk, images, contrast_seed))
            for r, m in zip(chunk, alt, strict=True):
                r[CONTRAST_MEAN] = np.asarray(m, np.float32)
    return rows


def build_latent_cache(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    encode: EncodeFn,
    *,
    encoder_id: str,
    split: str = "train",
    batch_size: int = 32,
    progress: bool = True,
    contrast_seed: int | None = None,
) -> dict[str, Any]:
    """Write `{out_dir}/{split}.*`: the slices of `source` with their posterior moments.

    `encoder_id` names the encoder (e.g. its checkpoint path and step); a different id
    rebuilds the cache.
    """
    shards, _ = records.resolve_shards(source, split)
    units = [Unit(key=os.path.basename(p), subject="", inputs=(("shard", p),)) for p in shards]
    settings = {"source": "latent_cache", "encoder_id": str(encoder_id)}
    if contrast_seed is not None:
        settings["contrast_seed"] = int(contrast_seed)
    return write_shard_set(
        units, lambda u: _cache_records(u, encode, batch_size, contrast_seed), out_dir, split,
        units_per_shard=1, settings=settings, bad_input="stop", progress=progress,
    )
