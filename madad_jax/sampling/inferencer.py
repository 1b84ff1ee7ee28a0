"""The one inference path: a checkpoint's models over many images, in fixed-size batches,
each batch split over this process's devices (`madad_jax.core.mesh`).

    infer = inferencer(config, models)   # one jitted function per (models, settings)
    out = infer(params, images, key, batch_size, keys=("anomaly_map", "sample"))

Evaluation, predict and `madad_jax.analysis` all run through `Inferencer`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from madad_jax.core import mesh as mesh_lib
from madad_jax.diffusion.latent_norm import LatentNorm
from madad_jax.sampling.loading import Models

# The config sub-trees the jitted sampler depends on (see `anomaly.make_infer_fn`).
SETTINGS = ("sample", "diffusion", "latent_scale", "latent_whitening")
ALL_KEYS = ("anomaly_map", "sample", "reconstruction", "mean_anomalous")


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
        starts.set_postfix_str("compiling", refresh=True)  # the first batch waits for XLA
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
        if progress and bi == 0:
            starts.set_postfix_str("", refresh=False)
    return {k: np.concatenate(v, axis=0) for k, v in out.items()}


class Inferencer:
    """Mask-guided DDIM with one config's sampler settings, compiled once per batch shape.

    Batches are placed on a mesh of this process's devices (`core.mesh.local_mesh`): either
    all of them, each batch split over the mesh's data axis, or only the first one. XLA's
    results for an image depend (in the last float bits) on how many images each device
    holds, so each caller keeps the layout its outputs were defined with.
    """

    def __init__(self, config, models: Models):
        from madad_jax.sampling.anomaly import make_infer_fn

        self.fn = make_infer_fn(models.vae, models.denoiser, config)
        self._meshes: dict[int, Mesh] = {}

    def mesh(self, num_devices: int) -> Mesh:
        if num_devices not in self._meshes:
            self._meshes[num_devices] = mesh_lib.local_mesh(num_devices)
        return self._meshes[num_devices]

    def __call__(self, params: Any, images: np.ndarray, key: jax.Array, batch_size: int,
                 keys: tuple[str, ...] = ("anomaly_map",), progress: bool = False,
                 all_devices: bool = False) -> dict[str, np.ndarray]:
        """The outputs named by `keys` for `images` (N,H,W,C), `batch_size` at a time
        (at most N; the last batch is padded). With `all_devices` each batch is split over
        every local device, its size rounded up to a multiple of their count."""
        bs = max(1, min(int(batch_size), len(images)))
        n_dev = jax.local_device_count() if all_devices else 1
        bs = n_dev * -(-bs // n_dev)
        mesh = self.mesh(n_dev)
        params = jax.device_put(params, mesh_lib.replicated(mesh))
        return run_batches(self.fn, params, images, bs, key, keys=tuple(keys),
                           progress=progress, sharding=mesh_lib.batch_sharding(mesh))


def settings_key(config) -> str:
    """The sampler settings of `config` as canonical JSON text."""
    parts = {k: config.get(k) for k in SETTINGS}
    return json.dumps({k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in parts.items()},
                      sort_keys=True, default=str)


_CACHE: OrderedDict[tuple[Models, str], Inferencer] = OrderedDict()
CACHE_SIZE = 8  # keep a few compiled samplers, not every one ever made


def inferencer(config, models: Models) -> Inferencer:
    """The `Inferencer` for `models` and `config`'s sampler settings, made once and reused.

    The key is the modules themselves (Flax modules compare and hash by their fields) and the
    settings' JSON, so equal models with equal settings share one compiled function.
    """
    key = (models, settings_key(config))
    try:
        hash(key)
    except TypeError:  # a module with an unhashable field: no sharing
        return Inferencer(config, models)
    hit = _CACHE.get(key)
    if hit is None:
        hit = Inferencer(config, models)
        while len(_CACHE) >= CACHE_SIZE:
            _CACHE.popitem(last=False)
        _CACHE[key] = hit
    _CACHE.move_to_end(key)
    return hit


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
    keys: tuple[str, ...] = ALL_KEYS,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Mask-guided DDIM on `images` (N,H,W[,C]) in [-1, 1]; numpy arrays named by `keys`.

    The outputs are those of `madad_jax.sampling.anomaly.make_infer_fn`: `anomaly_map`
    (N,H,W), `sample` (the healthy counterpart) and `reconstruction` (N,H,W,C),
    `mean_anomalous` (N,h,w: 1 - P(clean) averaged over the DDIM steps), `flagged_frac`,
    `latent`, `encoded`. `key` defaults to `sample.seed`, `batch_size` to `sample.batch_size`.
    """
    x = _as_batch(images)
    key = jax.random.PRNGKey(int(config.sample.seed)) if key is None else key
    bs = int(batch_size or config.sample.batch_size)
    return inferencer(config, models)(params, x, key, bs, keys=tuple(keys), progress=progress)


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
