"""The latent-diffusion KL autoencoder (`AutoencoderKL` with its `Encoder` / `Decoder`), NHWC.

Submodule and parameter names follow the reference's state_dict (`down_0/block_1/norm1` for
`down.0.block.1.norm1`), so that `madad_jax.interop.import_reference` can map weights by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from madad_jax.models.blocks import ResidualNames, Upsample, residual_core
from madad_jax.models.layers import (
    Dtype,
    GroupNorm,
    conv,
    dense,
    matmul_precision,
    multihead_attention,
)

VAE_EPS = 1e-6
RES_NAMES = ResidualNames("norm1", "conv1", "norm2", "conv2", "nin_shortcut")


def _norm(dtype: Dtype, name: str) -> GroupNorm:
    return GroupNorm(epsilon=VAE_EPS, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> dropout -> conv3x3, plus a 1x1 skip if needed."""

    out_channels: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return residual_core(x, self.out_channels, RES_NAMES, epsilon=VAE_EPS,
                             dropout=self.dropout, train=train, dtype=self.dtype)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with separate 1x1 q, k, v projections."""

    dtype: Dtype = jnp.float32
    attention: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        h = _norm(self.dtype, "norm")(x).reshape(b, hh * ww, 1, c)
        q = dense(c, self.dtype, "q")(h)
        k = dense(c, self.dtype, "k")(h)
        v = dense(c, self.dtype, "v")(h)
        a = multihead_attention(q, k, v, self.attention).reshape(b, hh * ww, c)
        return x + dense(c, self.dtype, "proj_out")(a).reshape(b, hh, ww, c)


class Downsample(nn.Module):
    """Zero-pad (0, 1) on the bottom/right, then a stride-2 3x3 conv."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(x.shape[-1], 3, stride=2, padding=((0, 1), (0, 1)), dtype=self.dtype,
                    name="conv")(x)


class Level(nn.Module):
    """One resolution level: ResNet blocks, optional attention after each, then a resampler."""

    out_channels: int
    num_blocks: int
    use_attn: bool
    resample: str | None  # "down" | "up" | None
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for j in range(self.num_blocks):
            block = ResnetBlock(self.out_channels, self.dropout, self.dtype, name=f"block_{j}")
            x = block(x, train)
            if self.use_attn:
                x = AttnBlock(self.dtype, self.attention, name=f"attn_{j}")(x)
        if self.resample == "down":
            x = Downsample(self.dtype, name="downsample")(x)
        elif self.resample == "up":
            x = Upsample(self.dtype, name="upsample")(x)
        return x


class MidBlock(nn.Module):
    """ResNet -> attention (always present) -> ResNet."""

    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        x = ResnetBlock(c, self.dropout, self.dtype, name="block_1")(x, train)
        x = AttnBlock(self.dtype, self.attention, name="attn_1")(x)
        return ResnetBlock(c, self.dropout, self.dtype, name="block_2")(x, train)


class Encoder(nn.Module):
    ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    attn_resolutions: Sequence[int]
    z_channels: int
    double_z: bool
    resolution: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = conv(self.ch, 3, dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
        res = self.resolution
        n = len(self.ch_mult)
        for i, mult in enumerate(self.ch_mult):
            h = Level(self.ch * mult, self.num_res_blocks, res in self.attn_resolutions,
                      "down" if i != n - 1 else None, self.dropout, self.dtype, self.attention,
                      name=f"down_{i}")(h, train)
            if i != n - 1:
                res //= 2
        h = MidBlock(self.dropout, self.dtype, self.attention, name="mid")(h, train)
        h = nn.silu(_norm(self.dtype, "norm_out")(h))
        out = 2 * self.z_channels if self.double_z else self.z_channels
        return conv(out, 3, dtype=self.dtype, name="conv_out")(h)


class Decoder(nn.Module):
    ch: int
    out_ch: int
    ch_mult: Sequence[int]
    num_res_blocks: int
    attn_resolutions: Sequence[int]
    resolution: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    attention: str | None = None

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        n = len(self.ch_mult)
        res = self.resolution // 2 ** (n - 1)
        h = conv(self.ch * self.ch_mult[-1], 3, dtype=self.dtype, name="conv_in")(
            z.astype(self.dtype))
        h = MidBlock(self.dropout, self.dtype, self.attention, name="mid")(h, train)
        for i in reversed(range(n)):
            h = Level(self.ch * self.ch_mult[i], self.num_res_blocks + 1,
                      res in self.attn_resolutions, "up" if i != 0 else None, self.dropout,
                      self.dtype, self.attention, name=f"up_{i}")(h, train)
            if i != 0:
                res *= 2
        h = nn.silu(_norm(self.dtype, "norm_out")(h))
        return conv(self.out_ch, 3, dtype=self.dtype, name="conv_out")(h)


class AutoencoderKL(nn.Module):
    """KL-regularized autoencoder: `encode(x) -> (mean, logvar)`, `decode(z) -> x`.

    `z` is the unscaled latent (multiply by `latent_scale` for the diffusion space). Images
    are (B, H, W, in_channels), latents (B, H/f, W/f, embed_dim) with f = 2**(len(ch_mult)-1).
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    z_channels: int = 4
    double_z: bool = True
    in_channels: int = 1
    out_ch: int = 1
    resolution: int = 256
    dropout: float = 0.0
    embed_dim: int = 4
    dtype: Dtype = jnp.float32
    attention: str | None = None
    precision: str | None = None  # matmul/conv precision, see layers.resolve_precision

    def setup(self):
        if not self.double_z:
            raise ValueError("AutoencoderKL needs double_z=True (mean and logvar)")
        common = dict(ch=self.ch, ch_mult=tuple(self.ch_mult),
                      num_res_blocks=self.num_res_blocks,
                      attn_resolutions=tuple(self.attn_resolutions), resolution=self.resolution,
                      dropout=self.dropout, dtype=self.dtype, attention=self.attention)
        self.encoder = Encoder(z_channels=self.z_channels, double_z=True, **common)
        self.decoder = Decoder(out_ch=self.out_ch, **common)
        self.quant_conv = conv(2 * self.embed_dim, 1, padding=0, dtype=jnp.float32)
        self.post_quant_conv = conv(self.z_channels, 1, padding=0, dtype=self.dtype)

    def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Posterior mean and log-variance (clipped to [-30, 20]), float32."""
        with matmul_precision(self.precision):
            moments = self.quant_conv(self.encoder(x, train).astype(jnp.float32))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array, train: bool = False) -> jax.Array:
        with matmul_precision(self.precision):
            h = self.decoder(self.post_quant_conv(z.astype(self.dtype)), train)
        return h.astype(jnp.float32)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None,
                 train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Reconstruct `x` from a posterior sample (or the mean when `rng` is None).

        Returns `(reconstruction, mean, logvar)`.
        """
        mean, logvar = self.encode(x, train)
        z = mean if rng is None else sample_posterior(rng, mean, logvar)
        return self.decode(z, train), mean, logvar


def sample_posterior(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """A draw from N(mean, exp(logvar)): `mean + exp(0.5 * logvar) * eps`."""
    eps = jax.random.normal(rng, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps
