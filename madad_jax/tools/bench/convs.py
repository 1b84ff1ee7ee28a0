"""The VAE's 3x3 convolutions one at a time, in each lowering XLA could be given.

Inference and the encoder-bound train step are mostly the VAE's 3x3 convolutions, so their
speed on a CPU decides the ratio to the reference. This figure times one such convolution per
level of the VAE (its resolution and channel count, batch `batch`, float32) as:

- `nhwc`: `lax.conv_general_dilated` on NHWC / HWIO, the layout the model uses;
- `nchw`: the same on NCHW / OIHW (the layout PyTorch's kernels see);
- `im2col`: the 3x3 patches gathered (`conv_general_dilated_patches`), then one matmul;
- `shifted`: nine shifted views of the padded input, one matmul each, summed.

Each lowering's output is checked against `nhwc` (`max_abs_diff`), so a figure that is fast
because it computes something else shows. XLA's CPU options cannot change inside a process:
run the command again under another `XLA_FLAGS` (every line records it) to compare them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from madad_jax.tools.bench.harness import lower_compile, time_calls

CONV_IMPLS = ("nhwc", "nchw", "im2col", "shifted")
_NHWC = ("NHWC", "HWIO", "NHWC")


def vae_conv_shapes(vae_cfg: Any) -> list[tuple[int, int]]:
    """(spatial size, channels) of the 3x3 convolutions at each level of the VAE."""
    size, ch = int(vae_cfg.resolution), int(vae_cfg.ch)
    return [(size // 2**i, ch * int(m)) for i, m in enumerate(vae_cfg.ch_mult)]


def _nhwc(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_NHWC)


def _nchw(x: jax.Array, w: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NCHW", "OIHW", "NCHW"))


def _im2col(x: jax.Array, w: jax.Array) -> jax.Array:
    # The patches' feature axis is ordered (input channel, kh, kw).
    patches = lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME",
                                               dimension_numbers=_NHWC)
    kh, kw, c, o = w.shape
    return patches @ jnp.transpose(w, (2, 0, 1, 3)).reshape(c * kh * kw, o)


def _shifted(x: jax.Array, w: jax.Array) -> jax.Array:
    _, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = None
    for dy in range(3):
        for dx in range(3):
            term = xp[:, dy:dy + h, dx:dx + wd, :] @ w[dy, dx]
            out = term if out is None else out + term
    return out


_IMPLS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "nhwc": _nhwc, "nchw": _nchw, "im2col": _im2col, "shifted": _shifted}


def bench_conv(size: int, channels: int, impls: Sequence[str] = CONV_IMPLS, *, batch: int = 1,
               warmup: int = 1, reps: int = 5, tiny: bool = False) -> list[dict[str, Any]]:
    """One figure per lowering of a `channels` -> `channels` 3x3 convolution at size x size."""
    bad = [i for i in impls if i not in _IMPLS]
    if bad:
        raise ValueError(f"unknown convolution lowering {bad}; expected {list(CONV_IMPLS)}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    w = (rng.standard_normal((3, 3, channels, channels)) / np.sqrt(9 * channels)).astype(
        np.float32)
    want = np.asarray(jax.jit(_nhwc)(x, w))  # every lowering is checked against this
    flops = 2.0 * batch * size * size * channels * channels * 9
    figs = []
    for impl in impls:
        nchw = impl == "nchw"
        # The layout change is made once, outside the timed call, as a model in that layout
        # would hold its activations and kernels.
        args = jax.device_put((np.transpose(x, (0, 3, 1, 2)), np.transpose(w, (3, 2, 0, 1)))
                              if nchw else (x, w))
        compiled, lower_s, compile_s = lower_compile(jax.jit(_IMPLS[impl]), *args)
        out = np.asarray(compiled(*args))
        if nchw:
            out = np.transpose(out, (0, 2, 3, 1))
        t = time_calls(lambda c=compiled, a=args: c(*a), warmup, reps)
        figs.append(dict(
            figure="conv", impl=impl, batch=batch, size=size, channels=channels, kernel=3,
            conv_s=t["median"], conv_s_min=t["min"], conv_s_max=t["max"],
            conv_s_spread=t["spread"], conv_cpu_s=t["cpu_median"], flops=flops,
            gflops_per_s=flops / t["median"] / 1e9,
            max_abs_diff=float(np.max(np.abs(out - want))),
            ref_max_abs=float(np.max(np.abs(want))), lower_s=lower_s, compile_s=compile_s,
            warmup=warmup, reps=reps, tiny=tiny))
    return figs
