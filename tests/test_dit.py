"""The latent DiT: shapes, adaLN-Zero initial behaviour, unpatchify layout, scan and remat."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from madad_jax.config import default_config
from madad_jax.models import build_denoiser
from madad_jax.models.dit import DiT, sincos_pos_embed

SMALL = dict(hidden_size=32, depth=2, num_heads=4, mlp_ratio=2.0)


def _init(m, z, t):
    return jax.jit(m.init)(jax.random.key(1), z, t)


_JITTED = {}


def _apply(m, params, z, t, train=False, key=None):
    # one compiled function per (model, train), kept with its model so the id stays valid
    entry = _JITTED.get((id(m), train))
    if entry is None or entry[0] is not m:
        fn = jax.jit(lambda p, z, t, k: m.apply(p, z, t, train, rngs={"dropout": k}))
        entry = _JITTED[(id(m), train)] = (m, fn)
    return entry[1](params, z, t, jax.random.key(0) if key is None else key)


def _inputs(b=2, h=8, w=8):
    z = jax.random.normal(jax.random.key(0), (b, h, w, 4))
    return z, jnp.arange(b) * 3 % 10


def _perturb(params, key, scale=0.2):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_shapes_and_zero_initial_output(patch):
    m = DiT(**SMALL, patch_size=patch)
    z, t = _inputs(h=8, w=16)
    params = _init(m, z, t)
    x0, logit = _apply(m, params, z, t, True, jax.random.key(2))
    assert x0.shape == (2, 8, 16, 4) and logit.shape == (2, 8, 16, 1)
    assert x0.dtype == jnp.float32 and logit.dtype == jnp.float32
    # adaLN-Zero: the final layer is zero-initialized, so x0_hat = 0 and P(clean) = 0.5.
    assert float(jnp.abs(x0).max()) == 0.0 and float(jnp.abs(logit).max()) == 0.0


def test_zero_adaln_blocks_are_identity():
    z, t = _inputs()
    deep = DiT(**{**SMALL, "depth": 3}, patch_size=2, scan_layers=False)
    params = _init(deep, z, t)["params"]
    params = dict(params)
    for name in ("final_linear", "final_adaLN_modulation"):
        params[name] = _perturb(params[name], jax.random.key(3))
    shallow = DiT(**{**SMALL, "depth": 0}, patch_size=2, scan_layers=False)
    no_blocks = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    want = _apply(shallow, {"params": no_blocks}, z, t)
    got = _apply(deep, {"params": params}, z, t)
    assert float(jnp.abs(got[0]).max()) > 1e-2  # the perturbed output is not trivially zero
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # once a block's adaLN is non-zero it changes the output
    params["blocks_1"] = _perturb(params["blocks_1"], jax.random.key(4))
    assert float(jnp.abs(_apply(deep, {"params": params}, z, t)[0] - want[0]).max()) > 1e-3


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_unpatchify_layout(patch):
    m = DiT(**SMALL, patch_size=patch)
    z, t = _inputs()
    params = flax.core.unfreeze(_init(m, z, t))
    c_out = 5
    bias = jnp.arange(patch * patch * c_out, dtype=jnp.float32)
    params["params"]["final_linear"]["bias"] = bias
    x0, logit = _apply(m, params, z, t)
    out = np.concatenate([np.asarray(x0), np.asarray(logit)], axis=-1)
    i, j, c = np.meshgrid(np.arange(8), np.arange(8), np.arange(c_out), indexing="ij")
    want = ((i % patch) * patch + (j % patch)) * c_out + c
    np.testing.assert_array_equal(out[0], want)


def test_scan_equals_loop_and_remat_grads():
    z, t = _inputs()
    loop = DiT(**SMALL, patch_size=2, scan_layers=False)
    params = _perturb(_init(loop, z, t)["params"], jax.random.key(5))
    stacked = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    stack = lambda *xs: jnp.stack(xs)
    stacked["blocks"] = jax.tree.map(stack, params["blocks_0"], params["blocks_1"])
    want = _apply(loop, {"params": params}, z, t)
    scan = DiT(**SMALL, patch_size=2, scan_layers=True)
    ref_shapes = jax.tree.map(jnp.shape, jax.eval_shape(scan.init, jax.random.key(1), z, t))
    assert jax.tree.map(jnp.shape, stacked) == ref_shapes["params"]
    got = _apply(scan, {"params": stacked}, z, t)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    def loss(p, model):  # remat must not change the values or the gradients
        x0, logit = model.apply({"params": p}, z, t)
        return jnp.mean((x0 - want[0]) ** 2) + jnp.mean(logit**2)

    g0 = jax.jit(jax.grad(loss), static_argnums=1)(stacked, DiT(**SMALL, patch_size=2))
    g1 = jax.jit(jax.grad(loss), static_argnums=1)(stacked, DiT(**SMALL, patch_size=2, remat=True))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_and_dropout():
    z, t = _inputs()
    m32 = DiT(**SMALL, patch_size=2, dropout=0.5)
    params = _perturb(_init(m32, z, t), jax.random.key(6), 0.1)
    mbf = DiT(**SMALL, patch_size=2, dropout=0.5, dtype=jnp.bfloat16)
    a, b = _apply(m32, params, z, t)[0], _apply(mbf, params, z, t)[0]
    assert b.dtype == jnp.float32
    assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max()) + 1e-3
    d1 = _apply(m32, params, z, t, True, jax.random.key(7))[0]
    d2 = _apply(m32, params, z, t, True, jax.random.key(8))[0]
    assert float(jnp.abs(d1 - d2).max()) > 1e-4  # dropout is active in training mode


def test_built_from_config_and_pos_embed():
    cfg = default_config()
    cfg.model.name = "dit"
    cfg.model.dit.update(hidden_size=32, depth=1, num_heads=2, patch_size=4)
    m = build_denoiser(cfg)
    assert isinstance(m, DiT) and m.patch_size == 4 and m.scan_layers
    z, t = _inputs(h=32, w=32)
    x0, logit = _apply(m, _init(m, z, t), z, t)
    assert x0.shape == (2, 32, 32, 4) and logit.shape == (2, 32, 32, 1)
    pe = sincos_pos_embed(32, 3, 5)
    assert pe.shape == (15, 32)
    np.testing.assert_allclose(pe[0], [0.0] * 8 + [1.0] * 8 + [0.0] * 8 + [1.0] * 8)
    assert len({tuple(r) for r in pe.round(6)}) == 15  # every position is distinct
