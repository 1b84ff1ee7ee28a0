"""Speed benchmarks of training, inference and the data pipeline: one JSON line per figure.

    python -m madad_jax.bench --what=train --model=UNet_XS --batch=8 --image-size=256
    python -m madad_jax.bench --what=infer --model=UNet_XS --infer-batch=1 --ddim-steps=2,5,10
    python -m madad_jax.bench --what=data
    python -m madad_jax.bench --tiny            # seconds-long smoke run of everything

Every list-valued flag (`--model=UNet_XS,DiT_B`, `--dtype=float32,bfloat16`, `--donate=true,
false`, ...) is swept: one figure per combination. Figures are timed after `--warmup` calls,
over `--reps` calls, each blocked until its results are ready; lines give the median, min and
max (wall-clock) and the median process CPU time, which is steadier than wall time on a
shared machine. Lowering and compiling are timed separately.

Training runs the real `denoiser_task.make_train_step` under `jax.jit` on one device, with the state
donated (unless `--donate=false`), on random data placed on the device beforehand: images
through the VAE encoder, or (`--latent-cache=on`) the posterior moments a latent cache holds.
Inference runs `anomaly.make_infer_fn` (encode, the DDIM loop, both decodes, the smoothed map
in one jit) on random weights; `--infer-impl=separate` and `separate-sync` are the unfused
baselines (one jit per piece, a Python loop over steps, and with `-sync` a host read-back each
step). FLOPs are XLA's cost analysis (`flops_xla`, which counts loop bodies once) and the
matmul + conv count of the jaxpr (`flops`, loops counted in full); MFU divides `flops` by the
step time and the device's peak for the compute dtype (`flops.PEAK_FLOPS`).

Only jax, flax, optax, numpy, ml_collections and orbax (and scipy, through the sampler's
smoothing) are imported at module level; the data benchmark imports grain and ArrayRecord
when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from madad_jax import config as config_lib
from madad_jax.diffusion import sampler
from madad_jax.diffusion.latent_norm import LatentNorm
from madad_jax.models import build_denoiser, build_vae
from madad_jax.sampling import anomaly, inferencer
from madad_jax.tools import flops as flops_lib
from madad_jax.training import denoiser as denoiser_task
from madad_jax.training import optimizer

VOLUME_SLICES = 155  # axial slices of a BraTS / IXI volume in MNI space
WHAT = ("train", "infer", "data")
INFER_IMPLS = ("fused", "separate", "separate-sync")
ATTENTIONS = ("auto", "xla", "cudnn", "blocked", "naive")


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
    c.model.attention = "auto" if attention in ("naive", "blocked") else attention
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


# ------------------------------------------------------------------------------ attention


def naive_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    implementation: str | None = None) -> jax.Array:
    """Softmax attention written out as two einsums (the "before" of dot_product_attention)."""
    del implementation
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v)


@contextlib.contextmanager
def attention_override(name: str) -> Iterator[None]:
    """While tracing inside, the models use `naive_attention` (`name == "naive"`) or
    `attention.blocked_attention` (`"blocked"`) whatever `config.model.attention` says."""
    if name not in ("naive", "blocked"):
        yield
        return
    from madad_jax.models import dit, unet, vae
    from madad_jax.models.attention import blocked_attention

    impl = naive_attention if name == "naive" else (lambda q, k, v, implementation=None:
                                                     blocked_attention(q, k, v))
    mods = (dit, unet, vae)
    saved = [m.multihead_attention for m in mods]
    for m in mods:
        m.multihead_attention = impl
    try:
        yield
    finally:
        for m, f in zip(mods, saved, strict=True):
            m.multihead_attention = f


# ------------------------------------------------------------------------ measurement


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def time_calls(fn: Callable[[], Any], warmup: int, reps: int) -> dict[str, Any]:
    """Wall and process-CPU seconds of `reps` calls of `fn` after `warmup` calls."""
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        _block(fn())
        if i == 0:
            first = time.perf_counter() - t0
    walls, cpus = [], []
    for _ in range(max(reps, 1)):
        c0, t0 = time.process_time(), time.perf_counter()
        _block(fn())
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    med = statistics.median(walls)
    return dict(
        median=med, min=min(walls), max=max(walls),
        spread=(max(walls) - min(walls)) / med if med > 0 else 0.0,
        all=[round(w, 6) for w in walls], cpu_median=statistics.median(cpus), first=first,
    )


def _mb(n: float | int | None) -> float | None:
    return None if n is None else round(float(n) / 2**20, 3)


def memory_fields(compiled: Any = None) -> dict[str, Any]:
    """Host peak RSS, device memory counters, and the executable's own buffer sizes."""
    out: dict[str, Any] = {
        # ru_maxrss is in KiB on Linux, bytes on macOS.
        "peak_rss_mb": _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                           * (1 if sys.platform == "darwin" else 1024)),
    }
    stats = None
    with contextlib.suppress(Exception):
        stats = jax.local_devices()[0].memory_stats()
    if stats:
        out["device_peak_mb"] = _mb(stats.get("peak_bytes_in_use"))
        out["device_in_use_mb"] = _mb(stats.get("bytes_in_use"))
        out["device_limit_mb"] = _mb(stats.get("bytes_limit"))
    else:
        out["device_peak_mb"] = None
    if compiled is not None:
        with contextlib.suppress(Exception):
            m = compiled.memory_analysis()
            out.update(temp_mb=_mb(m.temp_size_in_bytes), argument_mb=_mb(m.argument_size_in_bytes),
                       output_mb=_mb(m.output_size_in_bytes), alias_mb=_mb(m.alias_size_in_bytes))
    return out


def environment() -> dict[str, Any]:
    dev = jax.local_devices()[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return dict(backend=jax.default_backend(), device_kind=dev.device_kind,
                jax=jax.__version__, host_cpus=os.cpu_count(), load_avg_1m=load,
                machine=platform.machine())


def rate_fields(seconds: float, flops: float | None, flops_xla: float | None,
                dtype: str) -> dict[str, Any]:
    """Achieved TFLOP/s and MFU against the device's peak for `dtype` (None if unknown)."""
    out: dict[str, Any] = dict(flops=flops, flops_xla=flops_xla)
    peak = flops_lib.peak_flops(jax.local_devices()[0].device_kind, dtype)
    out["peak_tflops"] = None if peak is None else peak / 1e12
    for key, f in (("", flops), ("_xla", flops_xla)):
        achieved = f / seconds if f and seconds > 0 else None
        out[f"tflops_per_s{key}"] = None if achieved is None else achieved / 1e12
        out[f"mfu{key}"] = None if achieved is None or peak is None else achieved / peak
    return out


def _param_count(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _lower_compile(jitted: Any, *args: Any) -> tuple[Any, float, float]:
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


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
    with attention_override(attention):
        jitted = jax.jit(step_fn, donate_argnums=(0,) if donate else ())
        compiled, lower_s, compile_s = _lower_compile(jitted, state, data)
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
        params_m=_param_count(state["params"]["denoiser"]) / 1e6,
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
    encode = jax.jit(lambda p, x: norm.to_model(vae.apply({"params": p}, x, method=vae.encode)[0]))
    decode = jax.jit(lambda p, z: vae.apply({"params": p}, norm.from_model(z), method=vae.decode))
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
                tiny: bool = False, volume: bool = False) -> list[dict[str, Any]]:
    """Inference figures: per batch, per slice and per 155-slice volume (projected from the
    batch time; measured end to end through `inferencer.run_batches` with `volume`)."""
    if impl not in INFER_IMPLS:
        raise ValueError(f"unknown inference implementation {impl!r}; expected {INFER_IMPLS}")
    cfg = model_config(model, image_size, dtype, tiny=tiny, attention=attention)
    cfg.sample.ddim_steps = int(ddim_steps)
    cfg.sample.batch_size = batch
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
    with attention_override(attention):
        if impl == "fused":
            infer = anomaly.make_infer_fn(vae, denoiser, cfg)
            compiled, lower_s, compile_s = _lower_compile(infer, params, images, key)
            run = compiled
        else:
            run = _separate_infer(vae, denoiser, cfg, sync=impl == "separate-sync")
            infer = anomaly.make_infer_fn(vae, denoiser, cfg)
        flops = flops_lib.model_flops(infer, params, images, key)
        t = time_calls(lambda: run(params, images, key), max(warmup, 1), reps)
    flops_xla = flops_lib.xla_flops(compiled) if compiled is not None else None
    per_slice = t["median"] / batch
    fig = dict(
        figure="infer", model=model, family=cfg.model.name, batch=batch,
        image_size=image_size, ddim_steps=int(ddim_steps), dtype=dtype, impl=impl,
        attention=attention, eta=float(cfg.sample.eta), map_source=cfg.sample.map_source,
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


# -------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"bench: {message}", file=sys.stderr)
        raise SystemExit(2)


def _ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def _bools(text: str) -> list[bool]:
    table = {"true": True, "on": True, "1": True, "yes": True,
             "false": False, "off": False, "0": False, "no": False}
    vals = [x.strip().lower() for x in text.split(",") if x.strip()]
    if not vals or any(v not in table for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated true/false, got {text!r}")
    return [table[v] for v in vals]


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        vals = [x.strip() for x in text.split(",") if x.strip()]
        bad = [v for v in vals if v not in allowed]
        if not vals or bad:
            raise argparse.ArgumentTypeError(f"{bad or text!r} not in {list(allowed)}")
        return vals

    return parse


def _models(text: str) -> list[str]:
    vals = [x.strip() for x in text.split(",") if x.strip()]
    known = set(config_lib.UNET_PRESETS) | set(config_lib.DIT_PRESETS)
    for v in vals:
        base, _, patch = v.partition("/")
        if base not in known or (patch and (base not in config_lib.DIT_PRESETS
                                             or not patch.isdigit())):
            raise argparse.ArgumentTypeError(
                f"unknown model {v!r}; expected one of {sorted(known)} (DiT as DiT_B/2)")
    if not vals:
        raise argparse.ArgumentTypeError("no model given")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m madad_jax.bench", description=__doc__.split("\n")[0])
    p.add_argument("--what", type=_choices(WHAT + ("all",)), default=["all"],
                   help="figures to take: train, infer, data or all")
    p.add_argument("--model", type=_models, default=["UNet_XS"],
                   help="UNet_XS..UNet_XL, DiT_S..DiT_XL (DiT_B/4: patch size 4)")
    p.add_argument("--batch", type=_ints, default=[8], help="training (and data) batch sizes")
    p.add_argument("--infer-batch", type=_ints, default=[1], help="inference batch sizes")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--latent-cache", type=_bools, default=[False, True],
                   help="train on cached posterior moments (skips the VAE encoder)")
    p.add_argument("--dtype", type=_choices(("float32", "bfloat16")), default=["float32"])
    p.add_argument("--donate", type=_bools, default=[True], help="donate the training state")
    p.add_argument("--attention", type=_choices(ATTENTIONS), default=["auto"],
                   help="jax.nn.dot_product_attention implementation, or naive einsums")
    p.add_argument("--dit-scan", type=_bools, default=[True], help="DiT: scan over layers")
    p.add_argument("--dit-remat", type=_bools, default=[False], help="DiT: remat each block")
    p.add_argument("--ddim-steps", type=_ints, default=[2, 5, 10])
    p.add_argument("--infer-impl", type=_choices(INFER_IMPLS), default=["fused"])
    p.add_argument("--volume", type=_bools, default=None,
                   help="also time a whole 155-slice volume end to end (default: off on CPU)")
    p.add_argument("--data-workers", type=_ints_or_zero, default=[0])
    p.add_argument("--data-slices", type=int, default=256)
    p.add_argument("--data-seconds", type=float, default=5.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tiny", action="store_true",
                   help="tiny models at 32x32 for a smoke test (figures mean nothing)")
    p.add_argument("--out", default="", help="also write the JSON lines to this file")
    p.add_argument("--verbose", action="store_true", help="tracebacks for failed figures")
    return p


def _ints_or_zero(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return out


def figure_jobs(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, Any],
                                                           Callable[[], list[dict]]]]:
    """(kind, settings, thunk) for every figure the flags ask for, in order."""
    what = set(WHAT) if "all" in args.what else set(args.what)
    common = dict(image_size=args.image_size, warmup=args.warmup, reps=args.reps,
                  tiny=args.tiny)
    if "train" in what:
        for model, batch, latents, dtype, donate, attn in itertools.product(
                args.model, args.batch, args.latent_cache, args.dtype, args.donate,
                args.attention):
            is_dit = model.partition("/")[0] in config_lib.DIT_PRESETS
            layouts = (itertools.product(args.dit_scan, args.dit_remat) if is_dit
                       else [(True, False)])
            for scan, remat in layouts:
                kw = dict(common, latents=latents, dtype=dtype, donate=donate,
                          attention=attn, scan=scan, remat=remat)
                yield ("train", dict(kw, model=model, batch=batch),
                       lambda m=model, b=batch, kw=kw: [bench_train(m, b, **kw)])
    if "infer" in what:
        volume = args.volume if args.volume is not None else [jax.default_backend() != "cpu"]
        for model, batch, steps, dtype, impl, attn in itertools.product(
                args.model, args.infer_batch, args.ddim_steps, args.dtype, args.infer_impl,
                args.attention):
            kw = dict(common, ddim_steps=steps, dtype=dtype, impl=impl, attention=attn,
                      volume=volume[0])
            yield ("infer", dict(kw, model=model, batch=batch),
                   lambda m=model, b=batch, kw=kw: bench_infer(m, b, **kw))
    if "data" in what:
        for batch in args.batch:
            yield ("data", dict(batch=batch, image_size=args.image_size),
                   lambda b=batch: bench_data(args.image_size, b, slices=args.data_slices,
                                              seconds=args.data_seconds,
                                              workers=args.data_workers))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tiny:
        args.image_size = min(args.image_size, 32)
        args.data_slices = min(args.data_slices, 16)
        args.data_seconds = min(args.data_seconds, 0.5)
    if args.image_size < 8 or args.image_size % 8:
        print(f"bench: --image-size must be a positive multiple of 8, not {args.image_size}",
              file=sys.stderr)
        return 2
    out_tmp = f"{args.out}.tmp-{os.getpid()}" if args.out else ""
    sink = open(out_tmp, "w") if out_tmp else None  # noqa: SIM115 (closed below)
    env = environment()
    failed = 0
    try:
        for kind, settings, thunk in figure_jobs(args):
            start_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            try:
                figs = thunk()
            except Exception as e:  # one failed figure does not stop the others
                failed += 1
                if args.verbose:
                    traceback.print_exc()
                figs = [dict(figure=kind, **settings,
                             error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")]
            for fig in figs:
                end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                line = json.dumps({**fig, **env, "load_avg_1m": start_load,
                                   "load_avg_1m_end": end_load})
                print(line, flush=True)
                if sink:
                    sink.write(line + "\n")
                    sink.flush()
        summary = json.dumps({"figure": "memory", **memory_fields(), **env})
        print(summary, flush=True)
        if sink:
            sink.write(summary + "\n")
            sink.close()
            os.replace(out_tmp, args.out)
    except BaseException:
        if sink:
            sink.close()
            with contextlib.suppress(OSError):
                os.remove(out_tmp)
        raise
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
