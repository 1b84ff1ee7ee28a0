"""The UNet and the KL autoencoder against the reference's own outputs (parity fixtures)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file

from madad_jax.config import default_config
from madad_jax.interop.import_reference import arch_from_reference, convert_unet, convert_vae
from madad_jax.models import AutoencoderKL, build_denoiser, build_vae, sample_posterior
from madad_jax.models.arch import apply_arch
from madad_jax.models.layers import (
    attention_impl,
    multihead_attention,
    resolve_precision,
    timestep_embedding,
)

TOL = 1e-4  # fixtures README: one call, max abs error


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a):
    return np.asarray(a, dtype=np.float32).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def case(case_dir):
    arch = arch_from_reference(json.loads((case_dir / "case.json").read_text()))
    config = default_config()
    apply_arch(config, arch)
    params = {
        "denoiser": convert_unet(load_file(case_dir / "unet.safetensors"),
                                 arch["model"]["unet"]),
        "vae": convert_vae(load_file(case_dir / "vae.safetensors"), arch["vae"]),
    }
    return config, params


def _denoise(config, params, z, t):
    model = build_denoiser(config)
    return jax.jit(lambda p, z, t: model.apply({"params": p}, z, t))(params, z, t)


def test_denoiser_matches_reference(case, case_dir):
    config, params = case
    f = np.load(case_dir / "forward.npz")
    x0_hat, logit = _denoise(config, params["denoiser"], nhwc(f["z_t"]), jnp.asarray(f["t"]))
    assert logit.shape == (4, 8, 8, 1)
    assert np.abs(nchw(x0_hat) - f["x0_hat"]).max() <= TOL
    assert np.abs(nchw(jax.nn.sigmoid(logit)) - f["mask_prob"]).max() <= TOL
    # The check can fail: another step gives a clearly different answer.
    other, _ = _denoise(config, params["denoiser"], nhwc(f["z_t"]), jnp.asarray(f["t"]) + 1)
    assert np.abs(nchw(other) - f["x0_hat"]).max() > 100 * TOL


def test_vae_matches_reference(case, case_dir):
    config, params = case
    v = np.load(case_dir / "vae.npz")
    vae = build_vae(config)
    apply = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=AutoencoderKL.encode))
    mean, logvar = apply(params["vae"], nhwc(v["x"]))
    assert np.abs(nchw(mean) - v["mean"]).max() <= TOL
    assert np.abs(nchw(logvar) - v["logvar"]).max() <= TOL
    decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method=AutoencoderKL.decode))
    dec = decode(params["vae"], nhwc(v["mean"]))
    assert dec.shape == (6, 64, 64, 1)
    assert np.abs(nchw(dec) - v["decoded"]).max() <= TOL

    z = sample_posterior(jax.random.key(0), mean, logvar)
    std = np.exp(0.5 * np.asarray(logvar))
    assert np.all(np.isfinite(z)) and 0.5 < np.std((np.asarray(z) - mean) / std) < 1.5


def test_bfloat16_compute_is_finite_and_close(case, case_dir):
    config, params = case
    f = np.load(case_dir / "forward.npz")
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.model.dtype = "bfloat16"
    x0_hat, logit = _denoise(cfg, params["denoiser"], nhwc(f["z_t"]), jnp.asarray(f["t"]))
    assert x0_hat.dtype == jnp.float32 and logit.dtype == jnp.float32
    assert np.all(np.isfinite(x0_hat)) and np.all(np.isfinite(logit))
    err = np.abs(nchw(x0_hat) - f["x0_hat"])
    scale = np.abs(f["x0_hat"]).max()
    assert err.mean() < 0.03 * scale and err.max() < 0.2 * scale
    assert np.abs(nchw(jax.nn.sigmoid(logit)) - f["mask_prob"]).max() < 0.1


def _random_params(abstract, seed):
    """Random parameters of the right shapes (much faster than compiling `init` on CPU)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape).astype(np.float32)), abstract)


def test_zero_initialized_heads():
    """As in the reference, both heads and every residual branch's last conv start at 0."""
    config = default_config()
    config.model.unet.update(model_channels=32, channel_mult=(1,), num_res_blocks=1,
                             attention_resolutions=(1,), num_heads=2)
    model = build_denoiser(config)
    z = jnp.ones((1, 4, 4, 4))
    p = model.init(jax.random.key(0), z, jnp.array([3]))["params"]
    for name in ("out_2", "mt_out_1"):
        assert not np.any(p[name]["kernel"])
    assert not np.any(p["input_blocks_1_0"]["out_layers_3"]["kernel"])
    assert not np.any(p["input_blocks_1_1"]["proj_out"]["kernel"])
    assert np.any(p["input_blocks_1_1"]["qkv"]["kernel"])


def test_timestep_embedding_is_cos_then_sin_of_raw_steps():
    emb = np.asarray(timestep_embedding(jnp.array([0, 3]), 6))
    freqs = np.exp(-np.log(10000.0) * np.arange(3) / 3)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(emb[0], [1, 1, 1, 0, 0, 0])
    assert timestep_embedding(jnp.array([1]), 7).shape == (1, 7)


def test_other_architecture_builds_and_trains_dropout():
    """Any sizes (odd level count, no attention) build; dropout needs and uses its RNG."""
    config = default_config()
    config.model.unet.update(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                             attention_resolutions=(2,), num_heads=2, dropout=0.5)
    config.vae.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                      resolution=16, embed_dim=3, z_channels=2)
    vae = build_vae(config)
    x = jnp.ones((2, 16, 16, 1))
    vp = _random_params(jax.eval_shape(vae.init, jax.random.key(0), x), seed=0)
    rec, mean, logvar = jax.jit(vae.apply)(vp, x)
    assert rec.shape == x.shape and mean.shape == (2, 8, 8, 3) and logvar.shape == mean.shape
    assert "attn_0" in vp["params"]["encoder"]["down_0"]  # 16 is in attn_resolutions
    assert "attn_0" not in vp["params"]["encoder"]["down_1"]
    model = build_denoiser(config)
    z = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    t = jnp.array([0, 9])
    p = _random_params(jax.eval_shape(model.init, jax.random.key(2), z, t), seed=1)
    apply = jax.jit(model.apply, static_argnums=3)
    x0, logit = apply(p, z, t, False)
    assert x0.shape == (2, 8, 8, 4) and logit.shape == (2, 8, 8, 1)
    a, _ = apply(p, z, t, True, rngs={"dropout": jax.random.key(3)})
    b, _ = apply(p, z, t, True, rngs={"dropout": jax.random.key(4)})
    c, _ = apply(p, z, t, False)
    assert not np.allclose(a, b) and not np.allclose(a, c)


def test_precision_and_attention_options():
    assert resolve_precision("auto", jnp.float32) == "highest"
    assert resolve_precision(None, jnp.bfloat16) is None
    assert resolve_precision("default", jnp.float32) is None
    with pytest.raises(ValueError):
        resolve_precision("tf32", jnp.float32)

    config = default_config()
    config.model.unet.update(model_channels=32, channel_mult=(1,), num_res_blocks=1,
                             attention_resolutions=(1,), num_heads=2)
    z, t = jnp.ones((1, 4, 4, 4)), jnp.array([3])
    model = build_denoiser(config)
    p = jax.eval_shape(model.init, jax.random.key(0), z, t)
    # float32 compute pins every matmul/conv to full float32 (GPUs would use TF32 otherwise).
    text = str(jax.make_jaxpr(model.apply)(p, z, t))
    assert "HIGHEST" in text and "precision=None" not in text
    config.model.dtype = "bfloat16"
    assert "HIGHEST" not in str(jax.make_jaxpr(build_denoiser(config).apply)(p, z, t))

    # cuDNN attention takes 16-bit inputs only: float32 attention falls back to XLA.
    q = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
    want = multihead_attention(q, q, q, None)
    # float32 summation order differs between SIMD widths: an absolute floor at the values' scale
    np.testing.assert_allclose(multihead_attention(q, q, q, "cudnn"), want, rtol=1e-6,
                               atol=1e-6 * float(jnp.abs(want).max()))
    with pytest.raises(ValueError):
        attention_impl("flash")
