"""Attention: each named implementation of `config.model.attention` against XLA's, and the
blocked implementation's forward, backward and block-size rule."""

import jax
import jax.numpy as jnp
import pytest

from madad_jax.models import attention
from madad_jax.models.layers import attention_impl, multihead_attention


@pytest.mark.parametrize("name", sorted(attention.ATTENTION_IMPLS))
def test_named_attention_matches_xla(name):
    """Every name `config.model.attention` accepts gives softmax attention, through the same
    dispatcher the models call ("cudnn" falls back to XLA for float32 inputs)."""
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    q, k, v = (jax.random.normal(key, (2, 24, 2, 8)) for key in keys)
    ref = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    out = jax.jit(lambda q, k, v: multihead_attention(q, k, v, attention_impl(name)))(q, k, v)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert jnp.allclose(out, ref, rtol=1e-5, atol=2e-6), float(jnp.abs(out - ref).max())


def test_attention_names():
    assert set(attention.ATTENTION_IMPLS) == {"auto", "xla", "cudnn", "blocked", "naive"}
    assert attention_impl("auto") is None and attention_impl(None) is None
    assert attention_impl("naive") == "naive" and attention_impl("blocked") == "blocked"
    with pytest.raises(ValueError, match="naive"):
        attention_impl("flash")


def test_naive_attention_matches_dot_product_attention():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    q, kk, v = (jax.random.normal(key, (2, 10, 3, 8)) for key in k)
    ref = jax.nn.dot_product_attention(q, kk, v)
    assert jnp.allclose(attention.naive_attention(q, kk, v), ref, atol=1e-5)


@pytest.mark.parametrize("shape,block", [((2, 64, 2, 8), 16), ((1, 48, 3, 4), None),
                                         ((2, 30, 1, 8), 8)])
def test_blocked_attention_matches_xla(shape, block):
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    q, k, v, w = (jax.random.normal(key, shape) for key in keys)

    def loss(f):
        return lambda q, k, v: jnp.sum(f(q, k, v) * w)

    ref = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla")  # noqa: E731
    mine = lambda q, k, v: attention.blocked_attention(q, k, v, block=block)  # noqa: E731
    assert jnp.allclose(mine(q, k, v), ref(q, k, v), atol=2e-6)
    g_ref = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    g_mine = jax.jit(jax.grad(loss(mine), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_mine, g_ref, strict=True):
        assert jnp.allclose(a, b, atol=1e-5), float(jnp.abs(a - b).max())
    # bfloat16 inputs: float32 scores and softmax, bfloat16 out.
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out = attention.blocked_attention(qb, kb, vb, block=block)
    assert out.dtype == jnp.bfloat16
    assert jnp.allclose(out.astype(jnp.float32), ref(q, k, v), atol=5e-2)


def test_block_size_rule():
    assert attention.block_size(8, 4, 1024) == 32  # the UNet's 32x32 attention at batch 8
    assert attention.block_size(1, 4, 1024) == 256
    assert attention.block_size(1, 1, 1024) == 1024  # small enough for one block
    assert attention.block_size(2, 2, 100) == 100  # no power of two >= 16 divides 100
    for b, h, t in [(8, 4, 1024), (3, 5, 96), (16, 12, 256)]:
        blk = attention.block_size(b, h, t)
        assert t % blk == 0 and (blk == t or blk >= 16)


@pytest.mark.parametrize("bwd_budget", [2 * 2 * 64 * 16, 2 * 2 * 64 * 32])
def test_blocked_attention_backward_over_several_blocks(monkeypatch, bwd_budget):
    """The two-pass backward with several query and key blocks matches XLA's gradient."""
    monkeypatch.setattr(attention, "BWD_BLOCK_ELEMENTS", bwd_budget)
    assert attention.block_size(2, 2, 64, bwd_budget) in (16, 32)
    keys = jax.random.split(jax.random.PRNGKey(2), 4)
    q, k, v, w = (jax.random.normal(key, (2, 64, 2, 8)) for key in keys)

    def grads(f):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) * w), argnums=(0, 1, 2)))(
            q, k, v)

    ref = grads(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"))
    mine = grads(lambda q, k, v: attention.blocked_attention(q, k, v, block=16))
    for a, b in zip(mine, ref, strict=True):
        assert jnp.allclose(a, b, atol=1e-5), float(jnp.abs(a - b).max())
