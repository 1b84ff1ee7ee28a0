"""The one inference path: a checkpoint's models over many images, in fixed-size batches.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from madad_jax.diffusion.latent_norm import LatentNorm
from madad_jax.sampling.loading import Models


def run_batches(
    infer: Callable[..., dict],
    params: Any,
    images: np.ndarray,
    batch_size: int,
    key: jax.Array,
    keys: tuple[str, ...] = ("anomaly_map",),
    progress: bool = False,
    sharding: Any = None,
) -> dict[str, np.ndarray]:
    """Run `infer` over `images` (N,H,W,C) in fixed-size batches; returns numpy arrays.

    The last batch is padded (by repeating its last image) so that the function compiles once;
    the padding is dropped. Each batch gets its own fold of `key`. With `sharding` (a
    NamedSharding of the batch axis), inputs are placed with it.
    """
    n = len(images)
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, total=-(-n // batch_size), desc="evaluate", unit="batch")
    for bi, s in enumerate(starts):
        batch = np.asarray(images[s : s + batch_size], np.float32)
        real = len(batch)
        if real < batch_size:
            pad = np.repeat(batch[-1:], batch_size - real, axis=0)
            batch = np.concatenate([batch, pad], axis=0)
        x = jax.device_put(batch, sharding) if sharding is not None else batch
        res = infer(params, x, jax.random.fold_in(key, bi))
        for k in keys:
            out[k].append(np.asarray(res[k])[:real])
    return {k: np.concatenate(v, axis=0) for k, v in out.items()}


_INFER_CACHE: dict[Any, tuple[Models, Any]] = {}


def _infer_fn(config, models: Models):
    from madad_jax.sampling.anomaly import make_infer_fn

    parts = ("sample", "diffusion", "latent_scale", "latent_whitening")
    key = (id(models), json.dumps(
        {k: v.to_dict() if hasattr(v, "to_dict") else v
         for k, v in ((k, config.get(k)) for k in parts)}, sort_keys=True, default=str))
    hit = _INFER_CACHE.get(key)
    if hit is not None and hit[0] is models:
        return hit[1]
    fn = make_infer_fn(models.vae, models.denoiser, config)
    while len(_INFER_CACHE) >= 8:  # keep a few compiled functions, not every one ever made
        _INFER_CACHE.pop(next(iter(_INFER_CACHE)))
    _INFER_CACHE[key] = (models, fn)
    return fn


def _as_batch(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images, np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N,H,W) or (N,H,W,C), got shape {x.shape}")
    return x


def anomaly_maps(
    config,
    models: Models,
    params: Any,
    images: np.ndarray,
    key: jax.Array | None = None,
    batch_size: int | None = None,
    keys: tuple[str, ...] = ("anomaly_map", "sample", "reconstruction", "mean_anomalous"),
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Mask-guided DDIM on `images` (N,H,W[,C]) in [-1, 1]; numpy arrays named by `keys`.

    The outputs are those of `madad_jax.sample.make_infer_fn`: `anomaly_map` (N,H,W),
    `sample` (the healthy counterpart) and `reconstruction` (N,H,W,C), `mean_anomalous`
    (N,h,w: 1 - P(clean) averaged over the DDIM steps), `flagged_frac`, `latent`, `encoded`.
    """
    from madad_jax.sampling.inferencer import run_batches

    x = _as_batch(images)
    key = jax.random.PRNGKey(int(config.sample.seed)) if key is None else key
    bs = int(batch_size or config.sample.batch_size)
    return run_batches(_infer_fn(config, models), params, x, max(1, min(bs, len(x))), key,
                       keys=tuple(keys), progress=progress)


def mask_head(
    config, models: Models, params: Any, images: np.ndarray, t: int | None = None
) -> np.ndarray:
    """P(anomalous) = 1 - P(clean) from the mask head, (N,h,w), for the encoded test latents
    at model timestep `t` (default: the first DDIM step's timestep, where sampling starts)."""
    from madad_jax.diffusion.sampler import ddim_tables

    x = jnp.asarray(_as_batch(images))
    if t is None:
        tables = ddim_tables(config.diffusion.num_steps, config.sample.ddim_steps)
        t = int(tables["timestep_map"][-1])
    norm = LatentNorm.from_config(config)
    z = norm.to_model(models.vae.apply({"params": params["vae"]}, x, method=models.vae.encode)[0])
    _, logit = models.denoiser.apply({"params": params["denoiser"]}, z,
                                     jnp.full((len(x),), t, jnp.int32), False)
    return np.asarray(1.0 - jax.nn.sigmoid(logit[..., 0].astype(jnp.float32)))
