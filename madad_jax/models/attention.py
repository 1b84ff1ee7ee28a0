"""Multi-head softmax attention and its named implementations (`config.model.attention`).

`multihead_attention` dispatches on the name: "xla" and "cudnn" are the implementations of
`jax.nn.dot_product_attention`; "blocked" is `blocked_attention` below; "naive" is
`naive_attention`, the scores written out as two einsums (a benchmark baseline); "auto" lets
JAX choose, except on CPU where it means "blocked".

`blocked_attention` computes softmax attention over blocks of queries, for backends without
a fused kernel. On CPU, `jax.nn.dot_product_attention`'s XLA path materializes the
(B, heads, T, T) scores in a layout that needs transposes of the whole matrix, and its
gradient reduces over that matrix again. At the UNet's 32x32 attention (T = 1024, head width
16) this made attention most of a training step. Here the scores exist one block of queries
at a time (small enough to stay in cache), heads-major so no large transpose is needed. The
backward pass recomputes the probabilities from the saved log-sum-exp (as flash attention
does), uses rowsum(dO * O) instead of a reduction over the scores, and runs once over query
blocks (dq) and once over key blocks (dk, dv), so that no block of probabilities is
transposed. The result equals plain softmax attention up to float rounding.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# Scores per block, B * heads * block * T: about 4 MiB of float32, which measured best on a
# 2-core CPU for the UNet's T = 1024 (block 32 at batch 8, 256 at batch 1).
BLOCK_ELEMENTS = 2**20
# The backward pass measured best with larger blocks (256 queries or keys at batch 8, T = 1024).
BWD_BLOCK_ELEMENTS = 2**23
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
    # Two passes, so that every matmul contracts over a minor dimension and no block of
    # probabilities needs transposing: over query blocks for dq, over key blocks for dk, dv.
    # Each pass recomputes its probabilities from the log-sum-exp.
    q, k, v, o, lse = res
    b, h, t, _ = q.shape
    bwd = block_size(b, h, t, BWD_BLOCK_ELEMENTS)
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1, keepdims=True)

    def query_block(xs):
        qc, doc, lsec, dc = xs
        p = jnp.exp(_scores(qc, k, scale) - lsec)
        dp = jnp.einsum("bhqd,bhkd->bhqk", doc, v, preferred_element_type=jnp.float32)
        ds = (p * (dp - dc) * scale).astype(qc.dtype)
        return jnp.einsum("bhqk,bhkd->bhqd", ds, k)

    lse_t, delta_t = jnp.swapaxes(lse, -1, -2), jnp.swapaxes(delta, -1, -2)  # (B,H,1,T)

    def key_block(xs):
        kc, vc = xs
        p_t = jnp.exp(_scores(kc, q, scale) - lse_t)
        dv = jnp.einsum("bhkq,bhqd->bhkd", p_t.astype(do.dtype), do,
                        preferred_element_type=jnp.float32)
        dp_t = jnp.einsum("bhkd,bhqd->bhkq", vc, do, preferred_element_type=jnp.float32)
        ds_t = (p_t * (dp_t - delta_t) * scale).astype(q.dtype)
        dk = jnp.einsum("bhkq,bhqd->bhkd", ds_t, q, preferred_element_type=jnp.float32)
        return dk.astype(k.dtype), dv.astype(v.dtype)

    dq = jax.lax.map(query_block, tuple(_split(x, bwd) for x in (q, do, lse, delta)))
    dk, dv = jax.lax.map(key_block, (_split(k, bwd), _split(v, bwd)))
    return _merge(dq), _merge(dk), _merge(dv)


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


def naive_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Softmax attention written out as two einsums (the "before" of dot_product_attention)."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v)


# `config.model.attention` -> the `implementation` passed to `multihead_attention`.
ATTENTION_IMPLS = {"auto": None, "xla": "xla", "cudnn": "cudnn", "blocked": "blocked",
                   "naive": "naive"}


def attention_impl(name: str | None) -> str | None:
    """`config.model.attention` to the `implementation` of `multihead_attention`."""
    if name is None:
        return None
    if name not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {name!r}; "
                         f"expected one of {sorted(ATTENTION_IMPLS)}")
    return ATTENTION_IMPLS[name]


def multihead_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                        implementation: str | None = None) -> jax.Array:
    """Softmax(q k^T / sqrt(d)) v on (B, T, heads, d) arrays, by the named implementation.

    cuDNN's fused kernel takes only 16-bit inputs; float32 attention (e.g. the float32
    autoencoder beside a bfloat16 denoiser) falls back to the XLA implementation. On CPU,
    "auto" (None) means "blocked": `blocked_attention`, which was 2-3x faster there than the
    XLA implementation (see docs/benchmarks.md).
    """
    if implementation == "naive":
        return naive_attention(q, k, v)
    if implementation == "blocked" or (implementation is None
                                       and jax.default_backend() == "cpu"):
        return blocked_attention(q, k, v)
    if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        implementation = "xla"
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
