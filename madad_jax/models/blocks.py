"""Blocks shared by the UNet, the autoencoder and the DiT (NHWC).

The residual core and the time-embedding MLP are functions called inside a parent module's
compact method: their submodules belong to that parent, under the names the caller passes,
so each network keeps the reference's parameter names (see `interop.import_reference`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from madad_jax.models.layers import (
    Dtype,
    GroupNorm,
    conv,
    timestep_embedding,
    upsample_nearest2x,
)


class ResidualNames(NamedTuple):
    """Submodule names of a residual block: two norm/conv pairs and the 1x1 skip conv."""

    norm1: str
    conv1: str
    norm2: str
    conv2: str
    skip: str


def residual_core(x: jax.Array, out_channels: int, names: ResidualNames, *, epsilon: float,
                  dropout: float, train: bool, dtype: Dtype, zero_init_out: bool = False,
                  condition: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """GN -> SiLU -> conv3x3 [-> condition] -> GN -> SiLU -> dropout -> conv3x3, plus skip.

    The skip is a 1x1 conv when the channel count changes. `condition` (the UNet's timestep
    term) maps the first conv's output to what the second norm sees.
    """
    h = nn.silu(GroupNorm(epsilon, dtype=dtype, name=names.norm1)(x))
    h = conv(out_channels, 3, dtype=dtype, name=names.conv1)(h)
    if condition is not None:
        h = condition(h)
    h = nn.silu(GroupNorm(epsilon, dtype=dtype, name=names.norm2)(h))
    h = nn.Dropout(dropout, deterministic=not train)(h)
    h = conv(out_channels, 3, dtype=dtype, name=names.conv2, zero_init=zero_init_out)(h)
    if x.shape[-1] != out_channels:
        x = conv(out_channels, 1, padding=0, dtype=dtype, name=names.skip)(x)
    return x + h


def time_embedding_mlp(t: jax.Array, batch: int, frequency_dim: int, features: int,
                       names: tuple[str, str],
                       kernel_init: nn.initializers.Initializer | None = None) -> jax.Array:
    """Sinusoidal embedding of raw steps -> Linear -> SiLU -> Linear, float32, (batch, features).

    `t` is a scalar or (batch,) integer steps; `names` are the two Linear layers' names.
    """
    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    init = {} if kernel_init is None else {"kernel_init": kernel_init}
    emb = timestep_embedding(t, frequency_dim)
    emb = nn.Dense(features, dtype=jnp.float32, param_dtype=jnp.float32, name=names[0],
                   **init)(emb)
    return nn.Dense(features, dtype=jnp.float32, param_dtype=jnp.float32, name=names[1],
                    **init)(nn.silu(emb))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv (`conv`) keeping the channel count."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(x.shape[-1], 3, dtype=self.dtype, name="conv")(upsample_nearest2x(x))
