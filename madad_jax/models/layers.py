"""Building blocks shared by the autoencoder and the UNet (NHWC layout).

Parameters are always float32; `dtype` is the compute dtype. GroupNorm statistics are
computed in float32 whatever the compute dtype, as the reference does.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from madad_jax.models.attention import (  # noqa: F401 (re-exported)
    ATTENTION_IMPLS,
    attention_impl,
    multihead_attention,
)

Dtype = Any


def parse_dtype(name: str | Dtype) -> Dtype:
    """`"float32"` / `"bfloat16"` (or a dtype) to a jnp dtype."""
    if not isinstance(name, str):
        return name
    table = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
             "bf16": jnp.bfloat16, "float16": jnp.float16, "fp16": jnp.float16}
    if name not in table:
        raise ValueError(f"unknown compute dtype {name!r}; expected one of {sorted(table)}")
    return table[name]


PRECISIONS = ("auto", "default", "high", "highest")


def resolve_precision(name: str | None, dtype: Dtype) -> str | None:
    """`config.model.precision` to a matmul/conv precision (None: the backend's default).

    "auto" gives "highest" for float32 compute, so that float32 really is float32 on GPUs
    (TF32 otherwise) and TPUs (one bf16 pass otherwise); this is what reference parity needs.
    Lower-precision compute dtypes keep the backend default.
    """
    name = name or "auto"
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; expected one of {PRECISIONS}")
    if name == "auto":
        return "highest" if jnp.dtype(dtype) == jnp.float32 else None
    return None if name == "default" else name


def matmul_precision(precision: str | None) -> contextlib.AbstractContextManager:
    """A context that sets the default precision of the matmuls and convs traced inside."""
    if precision is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(precision)


class GroupNorm(nn.Module):
    """GroupNorm over (H, W, C/G) computed in float32, output cast to `dtype`.

    Parameters `scale` and `bias` (torch: `weight`, `bias`) are float32.
    """

    epsilon: float = 1e-5
    num_groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels not divisible by {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        xf = x.astype(jnp.float32)
        g = xf.reshape(*x.shape[:-1], self.num_groups, c // self.num_groups)
        axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
        mean = g.mean(axis=axes, keepdims=True)
        var = jnp.square(g - mean).mean(axis=axes, keepdims=True)
        y = ((g - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return (y * scale + bias).astype(self.dtype)


def conv(features: int, kernel: int = 3, stride: int = 1, padding: Any = "SAME",
         dtype: Dtype = jnp.float32, name: str | None = None, zero_init: bool = False) -> nn.Conv:
    """A 2D conv with torch-like explicit padding (`kernel // 2` on each side by default)."""
    if padding == "SAME":
        p = kernel // 2
        padding = ((p, p), (p, p))
    kw = dict(kernel_init=nn.initializers.zeros) if zero_init else {}
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                   dtype=dtype, param_dtype=jnp.float32, name=name, **kw)


def dense(features: int, dtype: Dtype = jnp.float32, name: str | None = None,
          zero_init: bool = False) -> nn.Dense:
    kw = dict(kernel_init=nn.initializers.zeros) if zero_init else {}
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name, **kw)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """ADM sinusoidal embedding of raw (unscaled) steps: `[cos, sin]`, zero-padded if odd."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t).astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def upsample_nearest2x(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
