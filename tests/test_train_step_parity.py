"""One training step against the reference's own (train_step fixture, dropout 0).

The recorded random draws (posterior noise, timesteps, clean mask, diffusion noise) go through
the project's loss code (`diffusion.loss.compute_loss`), `jax.grad` and `make_optimizer`.
`MADAD_TRAIN_PARITY_CASE=DIR` points these tests at another fixture laid out the same way.
"""

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import FIXTURES, require_fixture

from madad_jax.config import default_config
from madad_jax.diffusion import loss as dloss
from madad_jax.diffusion.masks import exclude_outside_brain, patch_grid_mask
from madad_jax.interop.import_reference import (
    arch_from_reference,
    convert_unet,
    convert_vae,
    load_state_dict,
)
from madad_jax.models import AutoencoderKL, build_denoiser, build_vae
from madad_jax.models.arch import apply_arch
from madad_jax.training.optimizer import make_optimizer

CASE = Path(os.environ.get("MADAD_TRAIN_PARITY_CASE", FIXTURES / "train_step_mc32_img64"))
TERMS_TOL = 1e-5  # per-sample loss terms, absolute
GRAD_TOL = 1e-5  # max abs error / largest gradient
LOSS_RTOL = 1e-4  # mean losses at steps 2 and 3
PARAM_TOL = 5e-5  # after 3 steps, where the step-1 gradient is not rounding noise


def nhwc(a):
    a = np.asarray(a)
    return jnp.asarray(a.transpose(0, 2, 3, 1) if a.ndim == 4 else a)


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _by_prefix(rec, prefix):
    return {k[len(prefix):]: v for k, v in rec.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def case():
    require_fixture(CASE / "case.json", "training-step fixture")
    meta = json.loads((CASE / "case.json").read_text())
    rec = dict(np.load(CASE / "train_step.npz"))
    weights = CASE / meta.get("weights_from", ".")
    ref = dict(meta, unet=dict(meta["unet"], dropout=0.0))
    arch = arch_from_reference(ref)
    config = default_config()
    apply_arch(config, arch)
    assert config.model.name == "unet" and config.model.unet.dropout == 0.0
    # The reference's mask term: MSE x 0.001.
    assert (config.diffusion.mask_loss, config.diffusion.mask_loss_weight) == ("mse", 0.001)
    vae_path = weights / "vae.safetensors"
    if not vae_path.exists():
        vae_path = weights / "vae_official.pt"
    params = {
        "denoiser": convert_unet(load_state_dict(str(weights / "unet.safetensors")),
                                 arch["model"]["unet"]),
        "vae": convert_vae(load_state_dict(str(vae_path)), arch["vae"]),
    }
    opt = meta["optimizer"]
    assert opt["name"] == "AdamW"
    # make_optimizer's AdamW is torch's: these are fixed there.
    assert tuple(opt["betas"]) == (0.9, 0.999) and opt["eps"] == 1e-8
    config.train.update(dict(lr=float(opt["lr"]), weight_decay=float(opt["weight_decay"]),
                             schedule="constant", warmup_steps=0, grad_clip=0.0,
                             lr_schedule="per_step"))
    clean = rec["clean_mask"]
    assert np.all(clean == clean[:, :1]), "the clean mask is shared by the latent channels"
    draws = dloss.Draws(t=jnp.asarray(rec["t"], jnp.int32),
                        clean=nhwc(clean[:, :1]), noise=nhwc(rec["noise"]))
    return dict(meta=meta, rec=rec, config=config, params=params, draws=draws,
                z0=nhwc(rec["z0"]))


def _apply_fn(config):
    model = build_denoiser(config)
    return lambda p, z, t, train, rngs: model.apply({"params": p}, z, t, train, rngs=rngs)


@pytest.fixture(scope="module")
def trained(case):
    """Step-1 gradients, and the mean losses and parameters over 3 AdamW steps."""
    config, z0, draws = case["config"], case["z0"], case["draws"]
    apply_fn = _apply_fn(config)

    @jax.jit
    def grad_fn(p):
        return jax.value_and_grad(
            lambda p: dloss.compute_loss(apply_fn, p, z0, draws, config, train=True),
            has_aux=True)(p)

    tx = make_optimizer(config.train)
    params = case["params"]["denoiser"]
    state = tx.init(params)
    losses, first = [], None
    for _ in range(case["meta"]["steps"]):
        (_, aux), grads = grad_fn(params)
        losses.append({k: float(aux[k]) for k in ("loss", "mse", "mask_loss")})
        first = grads if first is None else first
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return dict(grads=first, losses=losses, params=params)


def test_train_step_parity_posterior_and_latent(case):
    config, rec = case["config"], case["rec"]
    vae = build_vae(config)
    encode = jax.jit(lambda p, x: vae.apply({"params": p}, x, method=AutoencoderKL.encode))
    mean, logvar = encode(case["params"]["vae"], nhwc(rec["image"]))
    np.testing.assert_allclose(mean, nhwc(rec["vae_mean"]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logvar, nhwc(rec["vae_logvar"]), rtol=1e-4, atol=1e-4)
    scale = case["meta"]["latent_scale"]
    assert config.latent_scale == scale
    z0 = (rec["vae_mean"] + np.exp(0.5 * rec["vae_logvar"]) * rec["vae_eps"]) * scale
    np.testing.assert_allclose(z0, rec["z0"], rtol=1e-6, atol=1e-6)


def test_train_step_parity_clean_mask_from_patches(case):
    """The recorded patches (rows x columns) and the brain exclusion, through the project's
    own mask builder: the per-patch grid read off the recorded mask rebuilds it exactly."""
    rec, dcfg = case["rec"], case["config"].diffusion
    ph, pw = (int(v) for v in rec["patch_hw"])  # reference: x along rows, y along columns
    clean = rec["clean_mask"][:, 0]
    b, h, w = clean.shape
    blocks = clean.reshape(b, h // ph, ph, w // pw, pw)
    grid = blocks.min(axis=(2, 4))  # a patch is noised where any in-brain position is
    brain = jnp.asarray(rec["brainmask"], jnp.float32)
    rebuilt = exclude_outside_brain(patch_grid_mask(jnp.asarray(grid), ph, pw), brain,
                                    dcfg.brain_threshold)
    np.testing.assert_array_equal(np.asarray(rebuilt), clean)
    # Every position the exclusion covers (brain coverage below the threshold) is clean.
    outside = np.asarray(exclude_outside_brain(jnp.zeros((b, h, w)), brain,
                                               dcfg.brain_threshold)) > 0
    assert outside.any() and not outside.all() and np.all(clean[outside] == 1)
    # At most the drawn fraction of patches is noised (the exclusion can only clean more).
    n = grid[0].size
    n_noised = (grid == 0).reshape(b, -1).sum(axis=1)
    assert np.all(n_noised <= n - np.floor(n * (1.0 - rec["mask_ratios"])))
    assert n_noised.sum() > 0


def test_train_step_parity_z_t_and_per_sample_terms(case):
    config, rec, draws = case["config"], case["rec"], case["draws"]
    apply_fn = _apply_fn(config)

    @jax.jit
    def run(p):
        z_t, x0_hat, logit = dloss.predict(apply_fn, p, case["z0"], draws,
                                           config.diffusion.num_steps, True, jax.random.key(0))
        return z_t, dloss.per_sample_losses(case["z0"], x0_hat, logit, draws.clean,
                                            config.diffusion)

    z_t, terms = run(case["params"]["denoiser"])
    np.testing.assert_allclose(z_t, nhwc(rec["z_t"]), rtol=0, atol=TERMS_TOL)
    for ours, theirs in (("loss", "loss"), ("mse", "mse"), ("mask_loss", "mask_prediction")):
        np.testing.assert_allclose(terms[ours], rec[f"{theirs}_per_sample"], rtol=0,
                                   atol=TERMS_TOL, err_msg=ours)
    step1 = case["meta"]["losses"][0]
    assert float(jnp.mean(terms["loss"])) == pytest.approx(step1["loss"], rel=LOSS_RTOL)


def test_train_step_parity_gradients(case, trained):
    grads = _by_prefix(case["rec"], "grad/")
    assert len(grads) == len(case["meta"]["parameter_order"])
    want = _flat(convert_unet(grads, case["config"].model.unet.to_dict()))
    got = _flat(trained["grads"])
    assert want.keys() == got.keys()
    largest = max(np.abs(v).max() for v in want.values())
    err = max(np.abs(got[k] - want[k]).max() for k in want)
    assert err / largest <= GRAD_TOL, (err, largest)


def test_train_step_parity_three_adamw_steps(case, trained):
    meta = case["meta"]
    for step, (ours, theirs) in enumerate(zip(trained["losses"], meta["losses"], strict=True)):
        for k, ref_k in (("loss", "loss"), ("mse", "mse"), ("mask_loss", "mask_prediction")):
            assert ours[k] == pytest.approx(theirs[ref_k], rel=LOSS_RTOL), (step + 1, k)
    unet_cfg = case["config"].model.unet.to_dict()
    want = _flat(convert_unet(_by_prefix(case["rec"], "param_after/"), unet_cfg))
    g1 = _flat(convert_unet(_by_prefix(case["rec"], "grad/"), unet_cfg))
    got = _flat(trained["params"])
    before = _flat(case["params"]["denoiser"])
    lr = float(meta["optimizer"]["lr"])
    largest = max(np.abs(v).max() for v in g1.values())
    moved = 0
    for k in want:
        d = np.abs(got[k] - want[k])
        signal = np.abs(g1[k]) > 1e-3 * largest
        assert np.all(d[signal] <= PARAM_TOL), k
        assert np.all(d[~signal] <= 3.1 * lr), k
        moved += int(np.sum(np.abs(got[k] - before[k])[signal] > PARAM_TOL))
    assert moved > 0  # the check can fail: the parameters did move
