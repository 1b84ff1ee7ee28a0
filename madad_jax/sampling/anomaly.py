"""Mask-guided DDIM in latent space and the anomaly maps (METHOD.md, "Inference").

One jitted function per batch: encode (the posterior mean, normalized by
`madad_jax.diffusion.latent_norm.LatentNorm`: x latent_scale, or whitened), S DDIM steps in a
`lax.scan`, both decodes, the anomaly map and its Gaussian smoothing. At each step the
denoiser's clean-probability is recomputed, and only positions with P(clean) below
`sample.flag_threshold` (0.5, as in the reference) take the DDIM update; the others keep
their value.

Map sources (`config.sample.map_source`):
- "image" (the reference): `|decode(z_S) - decode(z_in)|`, max over image channels,
  clipped to `sample.clip`, times `sample.scale`, smoothed with sigma `sample.sigma`.
- "input": `|decode(z_S) - x|`, the healthy counterpart against the input itself (so the
  autoencoder's own reconstruction error is part of the map), clipped, scaled and smoothed
  as "image".
- "latent": the mean over latent channels of `|z_S - z_in|`, clipped to `sample.latent_clip`
  and divided by it (so it lies in [0, 1]), upsampled bilinearly (half-pixel centres) to the
  image size, then smoothed with the same Gaussian.
- "mask": the predicted anomalous probability `1 - P(clean)`, averaged over the S steps,
  upsampled and smoothed the same way.
None of the maps is multiplied by the brain mask: the reference does not do so either."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from madad_jax.core.errors import InputError
from madad_jax.diffusion.latent_norm import LatentNorm
from madad_jax.diffusion.sampler import ddim_step, ddim_tables
from madad_jax.models.adapters import denoiser_fn
from madad_jax.sampling.smoothing import gaussian_filter_2d

MAP_SOURCES = ("image", "input", "latent", "mask")


def _upsample(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(B,h,w) -> (B,H,W) bilinear with half-pixel centres."""
    return jax.image.resize(x, (x.shape[0], *size), method="linear")


def anomaly_map(
    source: str,
    scfg,
    x_hat: jax.Array,
    x_rec: jax.Array,
    z_out: jax.Array,
    z_in: jax.Array,
    mean_anomalous: jax.Array,
    images: jax.Array | None = None,
) -> jax.Array:
    """The (B,H,W) anomaly map of one of `MAP_SOURCES` (see the module docstring);
    `images` (the inputs) only for "input"."""
    size = x_hat.shape[1:3]
    if source in ("image", "input"):
        ref = x_rec if source == "image" else images
        if ref is None:
            raise ValueError("map_source 'input' needs the input images")
        diff = jnp.abs(x_hat - ref.astype(x_hat.dtype)).max(axis=-1)
        amap = jnp.clip(diff, 0.0, scfg.clip) * scfg.scale
    elif source == "latent":
        lc = float(scfg.latent_clip)
        diff = jnp.abs(z_out - z_in).mean(axis=-1)
        amap = _upsample(jnp.clip(diff, 0.0, lc) / lc, size)
    elif source == "mask":
        amap = _upsample(mean_anomalous, size)
    else:
        raise InputError(f"unknown sample.map_source {source!r}; expected one of {MAP_SOURCES}")
    return gaussian_filter_2d(amap, float(scfg.sigma))


def _sampler(vae, denoiser, config, n: int, trajectory: bool = False) -> Callable[..., dict]:
    """`run(params, images, key, thr, eta) -> dict`, un-jitted: encode, n mask-guided DDIM
    steps in a `lax.scan`, both decodes; no map. `thr` and `eta` are Python floats (baked into
    the program, as the reference computes) or traced scalars (one program for a sweep)."""
    encode, decode = _codec(vae, config)
    denoise = _denoise(None, denoiser, config, n, trajectory)

    def run(params, images, key, thr, eta):
        z_in = encode(params, images)
        res = denoise(params, z_in, key, thr, eta)
        res["reconstruction"] = recon = decode(params, z_in)
        # A batch in which no step flagged a position ends where it began, bit for bit: its
        # sample is the reconstruction, and the second decode is skipped.
        z_out = res["latent"]
        res["sample"] = jax.lax.cond(jnp.any(z_out != z_in),
                                     lambda: decode(params, z_out), lambda: recon)
        return res

    return run


def _codec(vae, config) -> tuple[Callable[..., jax.Array], Callable[..., jax.Array]]:
    """`encode(params, images) -> z` (normalized posterior mean) and `decode(params, z)`."""
    norm = LatentNorm.from_config(config)

    def encode(params, images):
        z = vae.apply({"params": params["vae"]}, images.astype(jnp.float32), method=vae.encode)
        return norm.to_model(z[0])

    def decode(params, z):
        return vae.apply({"params": params["vae"]}, norm.from_model(z), method=vae.decode)

    return encode, decode


def _denoise(decode: Callable[..., jax.Array] | None, denoiser, config, n: int,
             trajectory: bool = False) -> Callable[..., dict]:
    """`run(params, z_in, key, thr, eta) -> dict`: n mask-guided DDIM steps from the normalized
    latent `z_in`, and `decode` (of `_codec`) of the result (`sample`; none without `decode`);
    everything of `_sampler` but the encode and the reconstruction."""
    tables = ddim_tables(config.diffusion.num_steps, n)
    apply_den = denoiser_fn(denoiser)

    def run(params, z_in, key, thr, eta):
        def body(carry, xs):
            z, anomalous = carry
            i, k = xs
            out = ddim_step(apply_den, params["denoiser"], z, i, k, tables, eta, thr)
            carry = (out["z"], anomalous + (1.0 - out["p_clean"][..., 0]))
            if trajectory:
                ys = (z, out["x0_hat"], out["flagged"], out["p_clean"])
            else:
                ys = out["flagged"]
            return carry, ys

        steps = jnp.arange(n - 1, -1, -1)
        keys = jax.random.split(key, n)
        init = (z_in, jnp.zeros(z_in.shape[:3], jnp.float32))
        (z_out, anomalous), ys = jax.lax.scan(body, init, (steps, keys))
        flagged = ys[2] if trajectory else ys
        res = dict(
            latent=z_out,
            encoded=z_in,
            mean_anomalous=anomalous / n,
            flagged_frac=flagged.any(axis=0).mean(axis=(1, 2, 3)),
        )
        if trajectory:
            res.update(
                steps_z=jnp.concatenate([ys[0], z_out[None]], axis=0),
                steps_x0_hat=ys[1],
                steps_flagged=ys[2],
                steps_p_clean=ys[3],
                steps_t=tables["timestep_map"][steps],
            )
        if decode is not None:
            res["sample"] = decode(params, z_out)
        return res

    return run


def make_infer_fn(vae, denoiser, config, trajectory: bool = False) -> Callable[..., dict]:
    """Jitted `infer(params, images, key) -> dict` for one batch.

    `params` is `{"vae": ..., "denoiser": ...}` (the checkpoint's layout), `images`
    (B,H,W,C) in [-1, 1], `key` drives the DDIM noise (unused when eta = 0). The result holds
    `anomaly_map` (B,H,W), `sample` (decode of the corrected latent), `reconstruction`
    (decode of the input latent), `latent` (corrected, normalized), `encoded` (input, normalized),
    `mean_anomalous` (B,h,w: 1 - P(clean) averaged over steps) and `flagged_frac` (B,).
    With `trajectory`, also `steps_z` (S+1,...): each step's input then the last output,
    `steps_x0_hat` (S,...), `steps_flagged` and `steps_p_clean` (S,B,h,w,1), `steps_t` (S,).
    """
    scfg = config.sample
    if scfg.map_source not in MAP_SOURCES:
        raise InputError(f"unknown sample.map_source {scfg.map_source!r}; expected {MAP_SOURCES}")
    run = _sampler(vae, denoiser, config, int(scfg.ddim_steps), trajectory)
    eta = float(scfg.eta)
    thr = float(scfg.flag_threshold)

    @jax.jit
    def infer(params, images, key):
        res = run(params, images, key, thr, eta)
        res["anomaly_map"] = anomaly_map(
            scfg.map_source, scfg, res["sample"], res["reconstruction"], res["latent"],
            res["encoded"], res["mean_anomalous"], images)
        return res

    return infer


def make_sweep_fn(vae, denoiser, config, ddim_steps: int,
                  trajectory: bool = False) -> Callable[..., dict]:
    """Jitted `sweep(params, z_in, key, flag_threshold, eta) -> dict` with `ddim_steps` steps
    from the normalized latents `z_in` of `make_encode_fn`: the outputs of `make_infer_fn`
    but the map and the reconstruction, for any threshold and eta without a new compile (a
    threshold above 1 flags every position). The maps of any source and smoothing follow
    from them with `anomaly_map`. With `trajectory`, also the per-step outputs of
    `make_infer_fn`'s trajectory (`steps_p_clean`, ...)."""
    run = _denoise(_codec(vae, config)[1], denoiser, config, int(ddim_steps), trajectory)

    @jax.jit
    def sweep(params, z_in, key, flag_threshold, eta):
        return run(params, z_in, key, jnp.asarray(flag_threshold, jnp.float32),
                   jnp.asarray(eta, jnp.float32))

    return sweep


def make_encode_fn(vae, config) -> Callable[..., dict]:
    """Jitted `encode(params, images) -> {"encoded", "reconstruction"}`: what a sweep shares
    across its settings (the normalized latent and its decode, D(E(x)))."""
    encode, decode = _codec(vae, config)

    @jax.jit
    def fn(params, images):
        z = encode(params, images)
        return dict(encoded=z, reconstruction=decode(params, z))

    return fn
