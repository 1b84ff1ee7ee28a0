"""Autoencoder training: loss terms, the PatchGAN schedule, learning, checkpoints and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import ArrayBatches, make_slices, tiny_config

from madad_jax.core import checkpoint, mesh
from madad_jax.training import autoencoder as train_vae
from madad_jax.training import plan


def test_kl_and_hinge_values():
    mean = jnp.array([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])  # (2,1,1,2)
    logvar = jnp.array([[[[0.0, np.log(2.0)]]], [[[0.0, 0.0]]]])
    # per sample: 0.5*(1) + 0.5*(2 - 1 - ln 2), and 0; averaged over 2 samples
    want = (0.5 + 0.5 * (1.0 - np.log(2.0))) / 2
    assert float(train_vae.kl_divergence(mean, logvar)) == pytest.approx(want, rel=1e-6)
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.0])
    # relu(1-real) = [0, .5] -> .25 ; relu(1+fake) = [0, 1] -> .5
    assert float(train_vae.hinge_d_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))


def test_patch_discriminator_output_is_a_patch_grid():
    d = train_vae.PatchDiscriminator()
    x = jnp.zeros((2, 32, 32, 1))
    params = d.init(jax.random.PRNGKey(0), x)
    assert d.apply(params, x).shape == (2, 2, 2, 1)
    # pix2pix's 70x70 PatchGAN gives a 30x30 grid at 256x256.
    big = jax.ShapeDtypeStruct((1, 256, 256, 1), jnp.float32)
    assert jax.eval_shape(lambda p, x: d.apply(p, x), params, big).shape == (1, 30, 30, 1)


def test_gan_term_starts_at_its_step():
    c = tiny_config()
    c.vae_train.update(dict(gan_weight=0.5, gan_start_step=3))
    task = train_vae.VAETask(c, mesh.make_mesh(c))
    assert task.step_fn(2) is task.step_fn(0) is not task.step_fn(3)
    assert task.step_fn(3) is task.step_fn(100)
    assert "disc" in task.abstract and "disc_opt_state" in task.abstract
    c.vae_train.gan_weight = 0.0
    plain = train_vae.VAETask(c, mesh.make_mesh(c))
    assert plain.step_fn(100) is plain.step_fn(0) and "disc" not in plain.abstract


def test_vae_learns_checkpoints_and_resumes(tmp_path, capsys):
    c = tiny_config()
    # The adversarial step from the start: one compiled program for the whole test.
    c.vae_train.update(dict(num_steps=6, batch_size=8, lr=1e-3, gan_weight=0.5,
                            gan_start_step=0, log_every_steps=1, checkpoint_every_steps=3))
    data = make_slices(16, 32, seed=4)
    params = train_vae.train_loop(c, str(tmp_path), ArrayBatches(data, 8))
    err = capsys.readouterr().err
    rows = [line for line in err.splitlines() if line.startswith("[vae] step")]
    l1 = [float(line.split(" l1 ")[1].split()[0]) for line in rows]
    assert len(l1) == 6 and l1[-1] < 0.8 * l1[0], l1
    assert all(" d_loss " in line and " adv_weight " in line for line in rows)

    ckpts = str(tmp_path / "vae_checkpoints")
    assert checkpoint.latest_step(ckpts) == 6
    loaded, vae_arch = plan.load_vae(c, ckpts)  # what vae_train.checkpoint reads
    assert (vae_arch["ch"], list(vae_arch["ch_mult"])) == (c.vae.ch, list(c.vae.ch_mult))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))

    c.vae_train.num_steps = 7  # the same command with a longer schedule continues
    train_vae.train_loop(c, str(tmp_path), ArrayBatches(data, 8))
    err = capsys.readouterr().err
    assert "resuming from" in err and "at step 6" in err
    assert "[vae] step 7:" in err and "[vae] step 1:" not in err
    assert checkpoint.latest_step(ckpts) == 7
