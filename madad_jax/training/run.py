"""`mode=train`: resolve the autoencoder, build the latent cache, then train the denoiser.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import jax
import numpy as np
from etils import epath

from madad_jax.core import checkpoint as ckpt
from madad_jax.data.sources import train_batches, training_source, validation_batches
from madad_jax.diffusion import latent_norm as latents
from madad_jax.training.denoiser import init_vae_params, train_loop
from madad_jax.training.loop import State


def load_vae(config, directory: str) -> Any:
    """The `params["vae"]` of any checkpoint, with `config.vae` set from its `arch`."""
    params, arch = ckpt.load_params(directory)
    if "vae" not in params:
        raise ValueError(f"{directory}: checkpoint holds no 'vae' parameters")
    if isinstance(arch, dict) and isinstance(arch.get("vae"), dict):
        with config.unlocked():
            config.vae.update(ckpt._tuplify(arch["vae"]))
    want = jax.eval_shape(lambda: init_vae_params(config, jax.random.PRNGKey(0)))
    got = jax.tree.map(lambda x: tuple(np.shape(x)), params["vae"])
    if jax.tree.map(lambda x: tuple(x.shape), want) != got:
        raise ValueError(f"{directory}: its VAE parameters do not match config.vae")
    return params["vae"]


def resolve_vae(config, workdir: str) -> Any:
    """The frozen VAE for a new run: loaded (`vae_train.checkpoint`) or trained first."""
    vcfg = config.vae_train
    if vcfg.checkpoint:
        return load_vae(config, vcfg.checkpoint)
    if vcfg.enabled:
        from madad_jax.training import autoencoder as train_vae

        if config.data.get("latent_cache", ""):
            raise ValueError("data.latent_cache holds moments of another VAE; it cannot be "
                             "used while vae_train.enabled trains a new one")
        batches = train_batches(config, workdir, int(vcfg.batch_size), latents=False)
        return train_vae.train_loop(config, workdir, batches)
    raise ValueError("no autoencoder: set vae_train.checkpoint=CKPT_DIR (for example the "
                     "reference's imported VAE) or vae_train.enabled=True")


def _params_fingerprint(params: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def cache_run_latents(config, workdir: str, vae_params: Any | None) -> None:
    """`data.cache_latents`: encode the training slices once into `{workdir}/latent_cache`.

    The cache is named by a fingerprint of the VAE's parameters, so another VAE rebuilds it.
    A resumed run (`vae_params` None) reuses the cache its first run completed.
    """
    from madad_jax.training import latent_cache

    out = os.path.join(workdir, "latent_cache")
    if vae_params is not None:
        if jax.process_index() == 0:
            encode = latent_cache.vae_encoder(config, vae_params)
            latent_cache.build_latent_cache(
                training_source(config, workdir), out, encode,
                encoder_id=f"vae-{_params_fingerprint(vae_params)}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("latent_cache")
    elif not epath.Path(out).exists():
        raise ValueError(f"{out}: data.cache_latents is set but the resumed run has no cache")
    with config.unlocked():
        config.data.latent_cache = out
    from_data = _latent_norm_from_data(config)
    if from_data and vae_params is not None:
        stats = latents.stats_from_cache(out, float(config.diffusion.brain_threshold))
        with config.unlocked():
            if config.get("latent_scale_from_data", False):
                config.latent_scale = 1.0 / stats["std"]
            if config.get("latent_whiten_from_data", False):
                config.latent_whitening.update(latents.zca(stats["mean"], stats["cov"]))
    if jax.process_index() == 0 and config.get("latent_scale_from_data", False):
        print(f"latent_scale={config.latent_scale:.5g} (1 / std of the cached posterior means)",
              file=sys.stderr)
    if jax.process_index() == 0 and config.get("latent_whiten_from_data", False):
        print(f"latent whitening from the cached in-brain posterior means: "
              f"shift {np.round(config.latent_whitening.shift, 3).tolist()}", file=sys.stderr)


def adopt_derived_latent_norm(config, arch: dict[str, Any]) -> None:
    """On resume: take the latent scale / whitening the first run derived from its cache."""
    with config.unlocked():
        if config.get("latent_scale_from_data", False) and "latent_scale" in arch:
            config.latent_scale = float(arch["latent_scale"])
        if config.get("latent_whiten_from_data", False) and "latent_whitening" in arch:
            config.latent_whitening.update(ckpt._tuplify(arch["latent_whitening"]))


def _latent_norm_from_data(config) -> bool:
    return bool(config.get("latent_scale_from_data", False)
                or config.get("latent_whiten_from_data", False))


def apply_epochs(config, workdir: str) -> None:
    """With `train.num_epochs > 0`, set `num_steps` / `warmup_steps` from the data set size."""
    epochs = float(config.train.get("num_epochs", 0.0))
    if epochs <= 0:
        return
    from madad_jax.data import pipeline

    path = config.data.get("latent_cache", "") or training_source(config, workdir)
    source, _ = pipeline.open_source(path, "train")
    per_epoch = math.ceil(len(source) / int(config.train.batch_size))
    with config.unlocked():
        config.train.num_steps = max(1, round(epochs * per_epoch))
        config.train.warmup_steps = round(float(config.train.warmup_epochs) * per_epoch)
    if jax.process_index() == 0:
        print(f"{len(source)} training slices, {per_epoch} steps per epoch: "
              f"train.num_steps={config.train.num_steps}, "
              f"train.warmup_steps={config.train.warmup_steps}", file=sys.stderr)


def run(config, workdir: str) -> State:
    """`mode=train`: (train the VAE if asked, then) train the denoiser; resumes in `workdir`.

    `workdir` may be a local path or a bucket URL (gs://...) that every host sees.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if config.get("checkpoint", "") and jax.process_index() == 0:
        print(f"note: training ignores checkpoint={config.checkpoint} (evaluation reads it); "
              "vae_train.checkpoint sets the autoencoder", file=sys.stderr)
    if _latent_norm_from_data(config) and not config.data.get("cache_latents", False):
        raise ValueError("latent_scale_from_data / latent_whiten_from_data derive the latent "
                         "normalization from the latent cache: set data.cache_latents=True")
    apply_epochs(config, workdir)
    resuming = ckpt.latest_step(os.path.join(workdir, "checkpoints")) is not None
    if resuming:
        arch = ckpt.load_arch(os.path.join(workdir, "checkpoints"))
        with config.unlocked():
            config.vae.update(ckpt._tuplify(arch["vae"]))
        adopt_derived_latent_norm(config, arch)
    vae_params = None if resuming else resolve_vae(config, workdir)
    if config.data.get("cache_latents", False):
        cache_run_latents(config, workdir, vae_params)
    batches = train_batches(config, workdir, int(config.train.batch_size))
    return train_loop(config, workdir, batches, vae_params, validation_batches(config))
