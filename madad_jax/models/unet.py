"""The ADM UNet as MAD-AD uses it, with its extra patch-noise ("clean") head. NHWC.

Submodule names follow the reference's state_dict: `input_blocks_4_0/in_layers_2` is
`input_blocks.4.0.in_layers.2`, so `madad_jax.interop.import_reference` maps weights by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from madad_jax.models.blocks import ResidualNames, Upsample, residual_core, time_embedding_mlp
from madad_jax.models.layers import (
    Dtype,
    GroupNorm,
    conv,
    dense,
    matmul_precision,
    multihead_attention,
)

UNET_EPS = 1e-5
RES_NAMES = ResidualNames("in_layers_0", "in_layers_2", "out_layers_0", "out_layers_3",
                          "skip_connection")


class ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3, + Linear(SiLU(emb)), GN -> SiLU -> dropout -> conv3x3; 1x1 skip."""

    out_channels: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        def add_emb(h: jax.Array) -> jax.Array:
            e = dense(self.out_channels, self.dtype, "emb_layers_1")(
                nn.silu(emb).astype(self.dtype))
            return h + e[:, None, None, :].astype(h.dtype)

        return residual_core(x, self.out_channels, RES_NAMES, epsilon=UNET_EPS,
                             dropout=self.dropout, train=train, dtype=self.dtype,
                             zero_init_out=True, condition=add_emb)


class AttentionBlock(nn.Module):
    """Multi-head self-attention with the legacy QKV layout.

    The 1x1 `qkv` projection gives 3C channels laid out per head as [q_h, k_h, v_h] (each C/H
    wide), i.e. the reference reshapes to (B*H, 3*C/H, T) before splitting into q, k, v.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    attention: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"attention: {c} channels not divisible by {self.num_heads} heads")
        d = c // self.num_heads
        h = GroupNorm(UNET_EPS, dtype=self.dtype, name="norm")(x).reshape(b, hh * ww, c)
        qkv = dense(3 * c, self.dtype, "qkv")(h).reshape(b, hh * ww, self.num_heads, 3 * d)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        a = multihead_attention(q, k, v, self.attention).reshape(b, hh * ww, c)
        out = dense(c, self.dtype, "proj_out", zero_init=True)(a)
        return x + out.reshape(b, hh, ww, c)


class Downsample(nn.Module):
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(x.shape[-1], 3, stride=2, dtype=self.dtype, name="op")(x)


class UNet(nn.Module):
    """`UNet()(z_t, t, train) -> (x0_hat, clean_logit)`.

    `z_t`: (B, h, w, in_channels); `t`: (B,) integer steps (embedded raw, not rescaled).
    `x0_hat`: (B, h, w, out_channels) float32; `clean_logit`: (B, h, w, 1) float32, the logit
    of P(position is clean) (the reference applies the sigmoid inside the network).
    Dropout uses the "dropout" RNG stream when `train=True`.
    """

    model_channels: int = 256
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (4, 2, 1)
    channel_mult: Sequence[int] = (1, 2, 4)
    num_heads: int = 8
    in_channels: int = 4
    out_channels: int = 4
    dropout: float = 0.4
    dtype: Dtype = jnp.float32
    attention: str | None = None
    precision: str | None = None  # matmul/conv precision, see layers.resolve_precision

    @nn.compact
    def __call__(self, z_t: jax.Array, t: jax.Array,
                 train: bool = False) -> tuple[jax.Array, jax.Array]:
        with matmul_precision(self.precision):
            return self._forward(z_t, t, train)

    def _forward(self, z_t: jax.Array, t: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        mc, dt = self.model_channels, self.dtype
        emb = time_embedding_mlp(t, z_t.shape[0], mc, 4 * mc, ("time_embed_0", "time_embed_2"))

        def res(h, ch, name):
            return ResBlock(ch, self.dropout, dt, name=name)(h, emb, train)

        def attn(h, name):
            return AttentionBlock(self.num_heads, dt, self.attention, name=name)(h)

        h = conv(mc, 3, dtype=dt, name="input_blocks_0_0")(z_t.astype(dt))
        hs, ds, idx = [h], 1, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = res(h, mult * mc, f"input_blocks_{idx}_0")
                if ds in self.attention_resolutions:
                    h = attn(h, f"input_blocks_{idx}_1")
                hs.append(h)
                idx += 1
            if level != len(self.channel_mult) - 1:
                h = Downsample(dt, name=f"input_blocks_{idx}_0")(h)
                hs.append(h)
                idx += 1
                ds *= 2

        ch = h.shape[-1]
        h = res(h, ch, "middle_block_0")
        h = attn(h, "middle_block_1")
        h = res(h, ch, "middle_block_2")

        idx = 0
        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = res(h, mult * mc, f"output_blocks_{idx}_0")
                j = 1
                if ds in self.attention_resolutions:
                    h = attn(h, f"output_blocks_{idx}_{j}")
                    j += 1
                if level and i == self.num_res_blocks:
                    h = Upsample(dt, name=f"output_blocks_{idx}_{j}")(h)
                    ds //= 2
                idx += 1

        # The reference casts back to the input dtype before its two heads.
        h = h.astype(jnp.float32)
        out = nn.silu(GroupNorm(UNET_EPS, name="out_0")(h))
        x0_hat = conv(self.out_channels, 3, name="out_2", zero_init=True)(out)
        m = GroupNorm(UNET_EPS, name="mt_out_0")(h)
        clean_logit = conv(1, 3, name="mt_out_1", zero_init=True)(m)
        return x0_hat, clean_logit


UNetModel = UNet
