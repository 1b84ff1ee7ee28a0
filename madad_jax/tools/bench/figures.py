"""The benchmark figures: a training step, inference (per batch and per volume) and the data
pipeline, each measured on random weights and data and returned as a dict of JSON fields."""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from madad_jax import config as config_lib
from madad_jax.diffusion import sampler
from madad_jax.diffusion.latent_norm import LatentNorm
from madad_jax.models import build_denoiser, build_vae
from madad_jax.models.adapters import vae_decode, vae_encode
from madad_jax.sampling import anomaly, inferencer
from madad_jax.tools import flops as flops_lib
from madad_jax.tools.bench.harness import (
    lower_compile,
    memory_fields,
    param_count,
    rate_fields,
    time_calls,
)
from madad_jax.training import denoiser as denoiser_task
from madad_jax.training import optimizer

VOLUME_SLICES = 155  # axial slices of a BraTS / IXI volume in MNI space
INFER_IMPLS = ("fused", "separate", "separate-sync")


# ------------------------------------------------------------------------------ configs


def model_config(name: str, image_size: int, dtype: str, *, tiny: bool = False,
                 attention: str = "auto", scan: bool = True,
                 remat: bool = False) -> ml_collections.ConfigDict:
    """The shared config for one benchmarked model: the medical VAE and a UNet / DiT preset.

    `name` is a preset of `config.UNET_PRESETS` / `config.DIT_PRESETS`, a DiT optionally with
    its patch size (`DiT_B/4`). `tiny` keeps the family but shrinks VAE and denoiser to a few
    thousand parameters (for the smoke test).
    """
    c = config_lib.default_config()
    c.image_size = int(image_size)
    c.model.dtype = dtype
    c.model.attention = attention
    base, _, patch = name.partition("/")
    if base in config_lib.UNET_PRESETS:
        c.model.name = "unet"
        c.model.unet = config_lib.unet(base)
    elif base in config_lib.DIT_PRESETS:
        c.model.name = "dit"
        c.model.dit = config_lib.dit(base, int(patch or 2))
        c.model.dit.scan_layers = bool(scan)
        c.model.dit.remat = bool(remat)
    else:
        known = sorted(config_lib.UNET_PRESETS) + sorted(config_lib.DIT_PRESETS)
        raise ValueError(f"unknown model {name!r}; expected one of {known}")
    if tiny:
        c.vae.update(ch=32, ch_mult=(1, 2), num_res_blocks=1)
        c.model.unet.update(model_channels=32, channel_mult=(1, 2), num_heads=2,
                            num_res_blocks=1, attention_resolutions=(2,))
        c.model.dit.update(hidden_size=32, depth=2, num_heads=2)
    c.vae.resolution = int(image_size)
    return c


# ------------------------------------------------------------------------------ training


def train_batch(cfg: Any, batch: int, latents: bool, seed: int = 0) -> dict[str, jax.Array]:
    """A random training batch on the device: images in [-1, 1], or cached posterior moments."""
    rng = np.random.default_rng(seed)
    s = int(cfg.image_size)
    out = {"brainmask": np.ones((batch, s, s, 1), np.float32)}
    if latents:
        h, w, c = denoiser_task.latent_shape(cfg)
        out["latent_mean"] = rng.standard_normal((batch, h, w, c)).astype(np.float32)
        out["latent_logvar"] = np.full((batch, h, w, c), -6.0, np.float32)
    else:
        out["image"] = rng.uniform(-1.0, 1.0, (batch, s, s, 1)).astype(np.float32)
    return jax.device_put(out)


def bench_train(model: str, batch: int, *, image_size: int, latents: bool, dtype: str,
                donate: bool = True, attention: str = "auto", scan: bool = True,
                remat: bool = False, warmup: int = 1, reps: int = 3,
                tiny: bool = False) -> dict[str, Any]:
    """One training-step figure: slices/s, step time, compile time, FLOPs, MFU, memory."""
    cfg = model_config(model, image_size, dtype, tiny=tiny, attention=attention, scan=scan,
                       remat=remat)
    cfg.train.batch_size = batch
    tx = optimizer.make_optimizer(cfg.train)
    key = jax.random.PRNGKey(0)
    vae_params = jax.jit(lambda k: denoiser_task.init_vae_params(cfg, k))(key)
    state = jax.jit(lambda v: denoiser_task.init_state(cfg, v, tx))(vae_params)
    data = train_batch(cfg, batch, latents)
    step_fn = denoiser_task.make_train_step(cfg, tx)
    jitted = jax.jit(step_fn, donate_argnums=(0,) if donate else ())
    compiled, lower_s, compile_s = lower_compile(jitted, state, data)
    flops = flops_lib.model_flops(step_fn, state, data)
    flops_xla = flops_lib.xla_flops(compiled)
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], data)
        return holder["state"], metrics

    t = time_calls(call, warmup, reps)
    fig = dict(
        figure="train", model=model, family=cfg.model.name, batch=batch,
        image_size=image_size, latent_shape=list(denoiser_task.latent_shape(cfg)),
        latent_cache=latents, dtype=dtype, donate=donate, attention=attention,
        params_m=param_count(state["params"]["denoiser"]) / 1e6,
        step_s=t["median"], step_s_min=t["min"], step_s_max=t["max"],
        step_s_spread=t["spread"], step_s_all=t["all"], step_cpu_s=t["cpu_median"],
        slices_per_s=batch / t["median"], lower_s=lower_s, compile_s=compile_s,
        warmup=warmup, reps=reps, tiny=tiny,
    )
    if cfg.model.name == "dit":
        fig.update(dit_scan=scan, dit_remat=remat, patch_size=int(cfg.model.dit.patch_size))
    fig.update(rate_fields(t["median"], flops, flops_xla, dtype))
    fig.update(memory_fields(compiled))
    return fig


# ----------------------------------------------------------------------------- inference


def _separate_infer(vae: Any, denoiser: Any, cfg: Any, sync: bool) -> Callable[..., dict]:
    """The unfused baseline: a jit per piece and a Python loop over the DDIM steps."""
    scfg = cfg.sample
    norm = LatentNorm.from_config(cfg)
    n = int(scfg.ddim_steps)
    encode = jax.jit(lambda p, x: norm.to_model(vae_encode(vae, p, x)[0]))
    decode = jax.jit(lambda p, z: vae_decode(vae, p, norm.from_model(z)))
    step = sampler.make_step_fn(denoiser, cfg)
    amap = jax.jit(lambda xh, xr, zo, zi, ma: anomaly.anomaly_map(
        scfg.map_source, scfg, xh, xr, zo, zi, ma))

    def infer(params, images, key):
        z_in = encode(params["vae"], images)
        z, anomalous = z_in, jnp.zeros(z_in.shape[:3], jnp.float32)
        keys = jax.random.split(key, n)
        for j, i in enumerate(range(n - 1, -1, -1)):
            out = step(params["denoiser"], z, i, keys[j])
            z = out["z"]
            anomalous = anomalous + (1.0 - out["p_clean"][..., 0])
            if sync:  # a host read-back per step, as a loop that inspects its state does
                np.asarray(out["flagged"])
        x_hat, x_rec = decode(params["vae"], z), decode(params["vae"], z_in)
        return dict(anomaly_map=amap(x_hat, x_rec, z, z_in, anomalous / n))

    return infer


def bench_infer(model: str, batch: int, *, image_size: int, ddim_steps: int, dtype: str,
                impl: str = "fused", attention: str = "auto", warmup: int = 1, reps: int = 3,
                tiny: bool = False, volume: bool = False,
                flag_threshold: float = 0.5) -> list[dict[str, Any]]:
    """Inference figures: per batch, per slice and per 155-slice volume (projected from the
    batch time; measured end to end through `inferencer.run_batches` with `volume`).
    `decodes` says whether the second decode ran (1: no position was flagged, so the exact
    skip of `sampling.anomaly` returned the reconstruction)."""
    if impl not in INFER_IMPLS:
        raise ValueError(f"unknown inference implementation {impl!r}; expected {INFER_IMPLS}")
    cfg = model_config(model, image_size, dtype, tiny=tiny, attention=attention)
    cfg.sample.ddim_steps = int(ddim_steps)
    cfg.sample.batch_size = batch
    cfg.sample.flag_threshold = float(flag_threshold)
    vae, denoiser = build_vae(cfg, dtype=dtype), build_denoiser(cfg)
    key = jax.random.PRNGKey(0)
    params = jax.jit(lambda k: {
        "vae": denoiser_task.init_vae_params(cfg, k),
        "denoiser": denoiser_task.init_denoiser_params(cfg, jax.random.fold_in(k, 1)),
    })(key)
    rng = np.random.default_rng(0)
    images = jax.device_put(
        rng.uniform(-1.0, 1.0, (batch, image_size, image_size, 1)).astype(np.float32))
    lower_s = compile_s = None
    compiled = None
    if impl == "fused":
        infer = anomaly.make_infer_fn(vae, denoiser, cfg)
        compiled, lower_s, compile_s = lower_compile(infer, params, images, key)
        run = compiled
    else:
        run = _separate_infer(vae, denoiser, cfg, sync=impl == "separate-sync")
        infer = anomaly.make_infer_fn(vae, denoiser, cfg)
    flops = flops_lib.model_flops(infer, params, images, key)
    last: dict[str, Any] = {}  # the timed calls' last output, for `decodes`

    def call() -> dict:
        last["out"] = run(params, images, key)
        return last["out"]

    t = time_calls(call, max(warmup, 1), reps)
    flops_xla = flops_lib.xla_flops(compiled) if compiled is not None else None
    per_slice = t["median"] / batch
    out = last["out"]  # the separate jits always decode twice
    changed = "latent" not in out or bool(np.any(np.asarray(out["latent"])
                                                 != np.asarray(out["encoded"])))
    fig = dict(
        figure="infer", model=model, family=cfg.model.name, batch=batch,
        image_size=image_size, ddim_steps=int(ddim_steps), dtype=dtype, impl=impl,
        attention=attention, eta=float(cfg.sample.eta), map_source=cfg.sample.map_source,
        flag_threshold=float(flag_threshold),
        flagged_frac=(float(np.mean(np.asarray(out["flagged_frac"])))
                      if "flagged_frac" in out else None),
        decodes=2 if changed else 1,
        batch_s=t["median"], batch_s_min=t["min"], batch_s_max=t["max"],
        batch_s_spread=t["spread"], batch_s_all=t["all"], batch_cpu_s=t["cpu_median"],
        slice_s=per_slice, slices_per_s=batch / t["median"],
        volume_s_projected=math.ceil(VOLUME_SLICES / batch) * t["median"],
        first_call_s=t["first"], lower_s=lower_s, compile_s=compile_s,
        warmup=max(warmup, 1), reps=reps, tiny=tiny,
    )
    fig.update(rate_fields(t["median"], flops, flops_xla, dtype))
    fig.update(memory_fields(compiled))
    figs = [fig]
    if volume:
        figs.append(_bench_volume(run, params, batch, image_size, dict(fig), warmup, reps))
    return figs


def _bench_volume(run: Callable[..., dict], params: Any, batch: int, image_size: int,
                  base: dict[str, Any], warmup: int, reps: int) -> dict[str, Any]:
    """A whole volume from host numpy to host anomaly maps, through `inferencer.run_batches`."""
    rng = np.random.default_rng(1)
    vol = rng.uniform(-1.0, 1.0, (VOLUME_SLICES, image_size, image_size, 1)).astype(np.float32)
    key = jax.random.PRNGKey(1)
    t = time_calls(lambda: inferencer.run_batches(run, params, vol, batch, key), warmup, reps)
    keep = ("model", "family", "batch", "image_size", "ddim_steps", "dtype", "impl",
            "attention", "eta", "map_source", "tiny")
    fig = {"figure": "infer_volume", **{k: base[k] for k in keep}}
    fig.update(slices=VOLUME_SLICES, volume_s=t["median"],
               volume_s_min=t["min"], volume_s_max=t["max"], volume_s_spread=t["spread"],
               volume_s_all=t["all"], volume_cpu_s=t["cpu_median"],
               slices_per_s=VOLUME_SLICES / t["median"], warmup=warmup, reps=reps)
    fig.update(memory_fields())
    return fig


# ---------------------------------------------------------------------------- data


def bench_data(image_size: int, batch: int, *, slices: int = 256, seconds: float = 5.0,
               workers: Sequence[int] = (0,)) -> list[dict[str, Any]]:
    """grain + ArrayRecord training pipeline slices/s (`pipeline.bench_pipeline`), with and
    without augmentation, on a small random shard written to a temporary directory."""
    from madad_jax.data import pipeline, records

    rng = np.random.default_rng(0)
    s = int(image_size)
    yy, xx = np.mgrid[:s, :s]
    mask = (((yy - s / 2) / (0.4 * s)) ** 2 + ((xx - s / 2) / (0.33 * s)) ** 2 <= 1)
    figs = []
    with tempfile.TemporaryDirectory(prefix="madad_bench_") as tmp:
        path = os.path.join(tmp, records.shard_name("train", 0, 1))
        rows = (
            {"image": np.where(mask, rng.uniform(-1.0, 1.0, (s, s)), -1.0).astype(np.float32),
             "brainmask": mask.astype(np.uint8), "name": f"bench-slice_{i:04d}"}
            for i in range(slices)
        )
        records.write_shard(path, rows)
        size_mb = os.path.getsize(path) / 2**20
        for augment, nw in itertools.product((False, True), workers):
            res = pipeline.bench_pipeline(path, batch, augment, seconds, num_workers=nw)
            figs.append(dict(figure="data", image_size=s, shard_slices=slices,
                             shard_mb=round(size_mb, 3), **res, **memory_fields()))
    return figs
