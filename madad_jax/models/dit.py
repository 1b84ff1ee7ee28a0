"""A latent DiT (Peebles & Xie, adaLN-Zero) with MAD-AD's two outputs. NHWC.

`DiT()(z_t, t, train) -> (x0_hat, clean_logit)`, called exactly like `UNet`. The final
layer predicts `out_channels + 1` values per latent position after unpatchifying: the x0
prediction and the logit of P(position is clean).

Parameters are float32; `dtype` is the compute dtype of the matmuls. LayerNorm statistics,
the residual stream and the output layer stay in float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from madad_jax.models.blocks import time_embedding_mlp
from madad_jax.models.layers import Dtype, multihead_attention

FREQ_EMBED_DIM = 256
LN_EPS = 1e-6

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Fixed 2D sin-cos position embedding, (grid_h * grid_w, dim), row-major positions.

    Half of the channels encode the row, half the column, each as [sin, cos] of
    `pos / 10000^(2i/(dim/2))`.
    """
    if dim % 4:
        raise ValueError(f"DiT hidden_size must be a multiple of 4, got {dim}")

    def one_axis(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    return np.concatenate([one_axis(rows), one_axis(cols)], axis=1).astype(np.float32)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale[:, None]) + shift[:, None]


def _layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
    # Flax reduces in float32 whatever `dtype` is.
    return nn.LayerNorm(LN_EPS, use_bias=False, use_scale=False, dtype=dtype, name=name)


class DiTBlock(nn.Module):
    """Pre-LN transformer block whose LayerNorms are modulated by the conditioning (adaLN-Zero).

    Called as `(x, c) -> (x, None)` so that it can be scanned over depth.
    """

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    train: bool = False
    dtype: Dtype = jnp.float32
    attention: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> tuple[jax.Array, None]:
        d, dt = self.hidden_size, self.dtype
        if d % self.num_heads:
            raise ValueError(f"DiT: hidden_size {d} not divisible by {self.num_heads} heads")
        mod = nn.Dense(6 * d, dtype=dt, kernel_init=zeros, name="adaLN_modulation")(nn.silu(c))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
        drop = nn.Dropout(self.dropout, deterministic=not self.train)

        b, n, _ = x.shape
        h = modulate(_layer_norm(dt, "norm1")(x), shift_a, scale_a)
        qkv = nn.Dense(3 * d, dtype=dt, kernel_init=xavier, name="qkv")(h)
        q, k, v = jnp.split(qkv.reshape(b, n, 3 * self.num_heads, d // self.num_heads), 3, axis=2)
        a = multihead_attention(q, k, v, self.attention).reshape(b, n, d)
        a = nn.Dense(d, dtype=dt, kernel_init=xavier, name="proj")(a)
        x = x + (gate_a[:, None] * drop(a)).astype(x.dtype)

        h = modulate(_layer_norm(dt, "norm2")(x), shift_m, scale_m)
        h = nn.Dense(int(d * self.mlp_ratio), dtype=dt, kernel_init=xavier, name="fc1")(h)
        h = drop(nn.gelu(h, approximate=True))
        h = nn.Dense(d, dtype=dt, kernel_init=xavier, name="fc2")(h)
        x = x + (gate_m[:, None] * drop(h)).astype(x.dtype)
        return x, None


class DiT(nn.Module):
    """`DiT()(z_t, t, train) -> (x0_hat (B,h,w,out_channels), clean_logit (B,h,w,1))`, float32.

    `t` is the raw integer step (B,). With `scan_layers` the blocks' parameters are stacked
    along a leading depth axis under `blocks`; otherwise they are `blocks_0 ... blocks_{n-1}`.
    `remat` recomputes each block's activations in the backward pass.
    """

    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    patch_size: int = 2
    mlp_ratio: float = 4.0
    in_channels: int = 4
    out_channels: int = 4
    dropout: float = 0.0
    scan_layers: bool = True
    remat: bool = False
    dtype: Dtype = jnp.float32
    attention: str | None = None

    @nn.compact
    def __call__(
        self, z_t: jax.Array, t: jax.Array, train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        b, h, w, _ = z_t.shape
        p, d = self.patch_size, self.hidden_size
        if h % p or w % p:
            raise ValueError(f"DiT: latent {h}x{w} not divisible by patch size {p}")
        gh, gw = h // p, w // p

        patch_init = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1)
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    kernel_init=patch_init, name="x_embedder")(z_t.astype(self.dtype))
        x = x.reshape(b, gh * gw, d).astype(jnp.float32) + sincos_pos_embed(d, gh, gw)[None]

        c = time_embedding_mlp(t, b, FREQ_EMBED_DIM, d, ("t_embedder_0", "t_embedder_2"),
                               kernel_init=nn.initializers.normal(0.02))

        block_kw = dict(hidden_size=d, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                        dropout=self.dropout, train=train, dtype=self.dtype,
                        attention=self.attention)
        block = nn.remat(DiTBlock, prevent_cse=not self.scan_layers) if self.remat else DiTBlock
        if self.scan_layers:
            stack = nn.scan(block, variable_axes={"params": 0},
                            split_rngs={"params": True, "dropout": True},
                            in_axes=nn.broadcast, length=self.depth)
            x, _ = stack(**block_kw, name="blocks")(x, c)
        else:
            for i in range(self.depth):
                x, _ = block(**block_kw, name=f"blocks_{i}")(x, c)

        shift, scale = jnp.split(
            nn.Dense(2 * d, kernel_init=zeros, name="final_adaLN_modulation")(nn.silu(c)), 2, -1
        )
        x = modulate(_layer_norm(jnp.float32, "final_norm")(x), shift, scale)
        c_out = self.out_channels + 1
        x = nn.Dense(p * p * c_out, kernel_init=zeros, name="final_linear")(x)
        x = x.reshape(b, gh, gw, p, p, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c_out)
        return x[..., : self.out_channels], x[..., self.out_channels :]
