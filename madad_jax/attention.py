"""Softmax attention computed over blocks of queries, for backends without a fused kernel.

On CPU, `jax.nn.dot_product_attention`'s XLA path materializes the (B, heads, T, T) scores in
a layout that needs transposes of the whole matrix, and its gradient reduces over that matrix
again. At the UNet's 32x32 attention (T = 1024, head width 16) this made attention most of a
training step. Here the scores exist one block of queries at a time (small enough to stay in
cache), heads-major so no large transpose is needed, and the backward pass recomputes each
block's probabilities from the saved log-sum-exp (as flash attention does) and uses
rowsum(dO * O) instead of a reduction over the scores. The result equals plain softmax
attention up to float rounding.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# Scores per block, B * heads * block * T: about 4 MiB of float32, which measured best on a
# 2-core CPU for the UNet's T = 1024 (block 32 at batch 8, 256 at batch 1).
BLOCK_ELEMENTS = 2**20
MIN_BLOCK = 16


def block_size(batch: int, heads: int, t: int, budget: int = BLOCK_ELEMENTS) -> int:
    """The largest power of two <= budget / (batch * heads * t) (at least MIN_BLOCK) that
    divides `t`; `t` itself when none does or when it is smaller."""
    want = max(budget // max(batch * heads * t, 1), MIN_BLOCK)
    block = 1 << (want.bit_length() - 1)
    while block > 1 and t % block:
        block //= 2
    return t if block >= t or block < MIN_BLOCK else block


def _scores(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    return jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale


def _split(x: jax.Array, block: int) -> jax.Array:
    """(B, H, T, D) -> (T/block, B, H, block, D)."""
    b, h, t, d = x.shape
    return x.reshape(b, h, t // block, block, d).transpose(2, 0, 1, 3, 4)


def _merge(x: jax.Array) -> jax.Array:
    """(T/block, B, H, block, D) -> (B, H, T, D)."""
    n, b, h, blk, d = x.shape
    return x.transpose(1, 2, 0, 3, 4).reshape(b, h, n * blk, d)


def _forward(q, k, v, block, scale):
    def one(qc):
        s = _scores(qc, k, scale)
        m = jnp.max(s, axis=-1, keepdims=True)
        e = jnp.exp(s - m)
        denom = jnp.sum(e, axis=-1, keepdims=True)
        o = jnp.einsum("bhqk,bhkd->bhqd", (e / denom).astype(v.dtype), v)
        return o, m + jnp.log(denom)

    o, lse = jax.lax.map(one, _split(q, block))
    return _merge(o), _merge(lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _attention(q, k, v, block, scale):
    return _forward(q, k, v, block, scale)[0]


def _attention_fwd(q, k, v, block, scale):
    o, lse = _forward(q, k, v, block, scale)
    return o, (q, k, v, o, lse)


def _attention_bwd(block, scale, res, do):
    q, k, v, o, lse = res
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)

    def one(carry, xs):
        dk, dv = carry
        qc, doc, lsec, dc = xs
        p = jnp.exp(_scores(qc, k, scale) - lsec)
        dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p.astype(doc.dtype), doc,
                             preferred_element_type=jnp.float32)
        dp = jnp.einsum("bhqd,bhkd->bhqk", doc, v, preferred_element_type=jnp.float32)
        ds = (p * (dp - dc) * scale).astype(qc.dtype)
        dq = jnp.einsum("bhqk,bhkd->bhqd", ds, k)
        dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds, qc, preferred_element_type=jnp.float32)
        return (dk, dv), dq

    zeros = jnp.zeros(k.shape, jnp.float32)
    xs = tuple(_split(x, block) for x in (q, do, lse, delta))
    (dk, dv), dq = jax.lax.scan(one, (zeros, zeros), xs)
    return _merge(dq), dk.astype(k.dtype), dv.astype(v.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


def blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      block: int | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v for (B, T, heads, d) arrays, `block` queries at a time.

    `block` defaults to `block_size(...)`; one that does not divide T means one block.
    """
    b, t, h, _ = q.shape
    block = block_size(b, h, t) if block is None else block
    block = block if 0 < block < t and t % block == 0 else t
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    out = _attention(qh, kh, vh, block, 1.0 / math.sqrt(q.shape[-1]))
    return jnp.swapaxes(out, 1, 2)
