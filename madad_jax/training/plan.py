"""The run plan: everything a training run derives before its first step, in one frozen value.

The parsed config is never edited. What a run works out from its data and checkpoints (the
training slices, the step counts from epochs, the autoencoder and its architecture, the latent
cache and the latent normalization) is collected here, and `RunPlan.config` is a frozen copy of
the config with those values in place, which every later stage reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from madad_jax.core import checkpoint as ckpt
from madad_jax.core import hosts
from madad_jax.core.errors import InputError
from madad_jax.data import sources
from madad_jax.data.epochs import steps_in_epoch
from madad_jax.diffusion import latent_norm
from madad_jax.diffusion.latent_norm import LatentNorm
from madad_jax.models.arch import tuplify
from madad_jax.training import resume_check


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What `mode=train` derived; `config` is the frozen config the run trains with."""

    config: ml_collections.FrozenConfigDict
    workdir: str
    source: str  # the training slices: a shard set (or its manifest)
    latent_cache: str  # the posterior moments the denoiser reads; "" to encode on the fly
    vae_params: Any | None  # the frozen autoencoder; None on resume (the checkpoint has it)
    norm: LatentNorm
    steps_per_epoch: int  # ceil(training slices / train.batch_size)


def resolved(config, updates: dict[str, Any]) -> ml_collections.FrozenConfigDict:
    """A frozen copy of `config` with dotted-key `updates` ("train.num_steps": 9, ...)."""
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        for key, value in updates.items():
            *path, leaf = key.split(".")
            node = cfg
            for p in path:
                node = node[p]
            if isinstance(value, dict) and isinstance(node.get(leaf), ml_collections.ConfigDict):
                node[leaf].update(tuplify(value))
            else:
                node[leaf] = value
    return ml_collections.FrozenConfigDict(cfg)


def slices_in(path: str) -> int:
    """The number of training slices in the shard set (or latent cache) at `path`."""
    from madad_jax.data import pipeline

    source, _ = pipeline.open_source(path, "train")
    return len(source)


def epoch_steps(config, n: int) -> dict[str, int]:
    """With `train.num_epochs > 0`: `train.num_steps` / `warmup_steps` for `n` training
    slices (ceil(n / batch) steps per epoch); else no updates."""
    epochs = float(config.train.num_epochs)
    if epochs <= 0:
        return {}
    per_epoch = steps_in_epoch(n, int(config.train.batch_size))
    steps = {"train.num_steps": max(1, round(epochs * per_epoch)),
             "train.warmup_steps": round(float(config.train.warmup_epochs) * per_epoch)}
    if hosts.is_main():
        print(f"{n} training slices, {per_epoch} steps per epoch: "
              f"train.num_steps={steps['train.num_steps']}, "
              f"train.warmup_steps={steps['train.warmup_steps']}", file=sys.stderr)
    return steps


def norm_from_data(config) -> bool:
    return bool(config.latent_scale_from_data or config.latent_whiten_from_data)


def adopted_norm(config, arch: dict[str, Any]) -> dict[str, Any]:
    """On resume: the latent scale / whitening the first run derived from its cache."""
    out: dict[str, Any] = {}
    if config.latent_scale_from_data and "latent_scale" in arch:
        out["latent_scale"] = float(arch["latent_scale"])
    if config.latent_whiten_from_data and "latent_whitening" in arch:
        out["latent_whitening"] = dict(arch["latent_whitening"])
    return out


def norm_from_cache(config, cache: str) -> dict[str, Any]:
    """The latent scale / whitening derived from the cache's statistics, as config updates."""
    stats = latent_norm.stats_from_cache(cache, float(config.diffusion.brain_threshold))
    out: dict[str, Any] = {}
    if config.latent_scale_from_data:
        out["latent_scale"] = 1.0 / stats["std"]
    if config.latent_whiten_from_data:
        out["latent_whitening"] = latent_norm.zca(stats["mean"], stats["cov"])
    return out


def load_vae(config, directory: str) -> tuple[Any, dict[str, Any]]:
    """`(params["vae"], arch["vae"])` of any checkpoint, checked against the architecture."""
    from madad_jax.training.denoiser import init_vae_params

    params, arch = ckpt.load_params(directory)
    if "vae" not in params:
        raise InputError(f"{directory}: checkpoint holds no 'vae' parameters")
    vae_arch = dict(arch["vae"]) if isinstance(arch, dict) and isinstance(
        arch.get("vae"), dict) else config.vae.to_dict()
    want_cfg = resolved(config, {"vae": vae_arch})
    want = jax.eval_shape(lambda: init_vae_params(want_cfg, jax.random.PRNGKey(0)))
    got = jax.tree.map(lambda x: tuple(np.shape(x)), params["vae"])
    if jax.tree.map(lambda x: tuple(x.shape), want) != got:
        raise InputError(f"{directory}: its VAE parameters do not match config.vae")
    return params["vae"], vae_arch


def new_vae(config, workdir: str, source: str) -> tuple[Any, dict[str, Any]]:
    """The frozen VAE of a new run and its architecture: loaded, or trained first."""
    vcfg = config.vae_train
    if vcfg.checkpoint:
        return load_vae(config, vcfg.checkpoint)
    if vcfg.enabled:
        from madad_jax.training import autoencoder

        if config.data.latent_cache:
            raise InputError("data.latent_cache holds moments of another VAE; it cannot be "
                             "used while vae_train.enabled trains a new one")
        batches = sources.train_batches(config, source, int(vcfg.batch_size))
        return autoencoder.train_loop(config, workdir, batches), config.vae.to_dict()
    if vcfg.get("pretrained"):
        return load_vae(config, vcfg.pretrained)
    raise InputError("no autoencoder: set vae_train.checkpoint=CKPT_DIR (for example the "
                     "reference's imported VAE) or vae_train.enabled=True")


def fingerprint(params: Any) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def latent_cache_of(config, workdir: str, source: str, vae_params: Any | None) -> str:
    """`data.cache_latents`: the training slices encoded once into `{workdir}/latent_cache`.

    The cache is named by a fingerprint of the VAE's parameters, so another VAE rebuilds it.
    A resumed run (`vae_params` None) reuses the cache its first run completed.
    """
    from madad_jax.training import latent_cache

    out = os.path.join(workdir, "latent_cache")
    if vae_params is not None:
        contrast = float(config.diffusion.contrast_swap_prob) > 0
        if hosts.is_main():
            print(f"[train] latent cache: encoding the training slices into {out} (a complete "
                  "cache of this autoencoder is kept)", file=sys.stderr, flush=True)
            latent_cache.build_latent_cache(source, out,
                                            latent_cache.vae_encoder(config, vae_params),
                                            encoder_id=f"vae-{fingerprint(vae_params)}",
                                            contrast_seed=int(config.train.seed) if contrast
                                            else None)
        hosts.sync("latent_cache")
    elif not epath.Path(out).exists():
        raise InputError(f"{out}: data.cache_latents is set but the resumed run has no cache")
    return out


def make_plan(config, workdir: str) -> RunPlan:
    """Work out what `mode=train` trains with; may train the autoencoder first."""
    ckpt_dir = ckpt.run_directory(workdir)
    resume_check.check(config, ckpt_dir, "denoiser")  # before any work: another model?
    source = sources.training_source(config, workdir)
    n = slices_in(config.data.latent_cache or source)  # a cache holds one row per slice
    updates: dict[str, Any] = epoch_steps(config, n)
    resuming = ckpt.latest_step(ckpt_dir) is not None
    vae_params = None
    if resuming:
        arch = ckpt.load_arch(ckpt_dir)
        updates["vae"] = dict(arch["vae"])
        updates.update(adopted_norm(config, arch))
    else:
        vae_params, updates["vae"] = new_vae(config, workdir, source)
    cache = config.data.latent_cache
    if config.data.cache_latents:
        cache = latent_cache_of(resolved(config, updates), workdir, source, vae_params)
        if norm_from_data(config) and vae_params is not None:
            updates.update(norm_from_cache(config, cache))
    updates.update({"data.latent_cache": cache, "data.train_path": source})
    frozen = resolved(config, updates)
    _report_norm(frozen)
    return RunPlan(frozen, workdir, source, cache, vae_params, LatentNorm.from_config(frozen),
                   steps_in_epoch(n, int(config.train.batch_size)))


def _report_norm(config) -> None:
    if not hosts.is_main():
        return
    if config.latent_scale_from_data:
        print(f"latent_scale={config.latent_scale:.5g} (1 / std of the cached posterior means)",
              file=sys.stderr)
    if config.latent_whiten_from_data:
        print(f"latent whitening from the cached in-brain posterior means: "
              f"shift {np.round(config.latent_whitening.shift, 3).tolist()}", file=sys.stderr)
