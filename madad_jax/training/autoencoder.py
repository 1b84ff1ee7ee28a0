"""Training the KL autoencoder: L1 reconstruction + KL, optionally a patch-GAN term.

The losses follow latent diffusion's `LPIPSWithDiscriminator` without the perceptual term:
per-sample sums averaged over the batch,

    loss = sum|x - x_rec| + kl_weight * KL(q(z|x) || N(0, I)) + w_adv * gan_weight * g_loss

where `g_loss = -mean(D(x_rec))` and `w_adv = |grad nll| / |grad g_loss|` at the decoder's
last layer (clipped to [0, 1e4]). The PatchGAN discriminator trains with the hinge loss.
The adversarial terms start at `vae_train.gan_start_step` and only when `gan_weight > 0`.

Checkpoints go to `DIR/vae_checkpoints/` with the same layout as the denoiser's (`params`
holds `{"vae": ...}`), and the run resumes from them exactly."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax

from madad_jax.core import hosts
from madad_jax.core import mesh as mesh_lib
from madad_jax.models import build_vae, sample_posterior
from madad_jax.models.adapters import vae_decode, vae_encode
from madad_jax.models.arch import arch_from_config
from madad_jax.models.discriminator import PatchDiscriminator
from madad_jax.training import resume_check
from madad_jax.training.loop import (
    Batch,
    LoopSettings,
    ShardedTask,
    State,
    config_json,
    fit,
    new_state,
)

LAST_LAYER = ("decoder", "conv_out", "kernel")


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed per sample, averaged over the batch."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl) / mean.shape[0]


def hinge_d_loss(real: jax.Array, fake: jax.Array) -> jax.Array:
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))


def _leaf(tree: Any, path: tuple[str, ...]) -> jax.Array:
    for k in path:
        tree = tree[k]
    return tree


def use_gan(vcfg) -> bool:
    return float(vcfg.gan_weight) > 0


def make_optimizers(vcfg) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """Adam with latent diffusion's autoencoder betas (0.5, 0.9) for both networks."""
    lr = float(vcfg.lr)
    return optax.adam(lr, b1=0.5, b2=0.9), optax.adam(lr, b1=0.5, b2=0.9)


def init_state(config, tx, tx_d) -> State:
    vcfg = config.vae_train
    key = jax.random.PRNGKey(int(vcfg.seed) + 17)
    vae = build_vae(config)
    x = jnp.zeros((1, config.image_size, config.image_size, vae.in_channels), jnp.float32)
    params = vae.init(jax.random.fold_in(key, 1), x)["params"]
    extra = {}
    if use_gan(vcfg):
        disc = PatchDiscriminator().init(jax.random.fold_in(key, 2), x)["params"]
        extra = dict(disc=disc, disc_opt_state=tx_d.init(disc))
    return new_state({"vae": params}, tx, key, **extra)


def make_step(config, tx, tx_d, adversarial: bool) -> Callable:
    """`step(state, batch) -> (state, metrics)`; `adversarial` adds the GAN terms."""
    vcfg = config.vae_train
    vae = build_vae(config, dtype=config.model.dtype)
    disc = PatchDiscriminator()
    kl_w, gan_w = float(vcfg.kl_weight), float(vcfg.gan_weight)

    def step_fn(state: State, batch: Batch):
        x = batch["image"]
        key = jax.random.fold_in(state["rng"], state["step"])
        params = state["params"]["vae"]
        b = x.shape[0]

        def terms(p):
            mean, logvar = vae_encode(vae, p, x)
            z = sample_posterior(key, mean, logvar)
            rec = vae_decode(vae, p, z)
            nll = jnp.sum(jnp.abs(x - rec)) / b
            kl = kl_divergence(mean, logvar)
            g = (-jnp.mean(disc.apply({"params": state["disc"]}, rec)) if adversarial
                 else jnp.zeros((), jnp.float32))
            return (nll, kl, g), rec

        (nll, kl, g), vjp, rec = jax.vjp(terms, params, has_aux=True)
        (grads,) = vjp((jnp.ones_like(nll), jnp.full_like(kl, kl_w), jnp.zeros_like(nll)))
        metrics = dict(nll=nll, l1=nll / x[0].size, kl=kl)
        loss = nll + kl_w * kl
        new = dict(state, step=state["step"] + 1)
        if adversarial:
            (g_grads,) = vjp((jnp.zeros_like(nll), jnp.zeros_like(kl), jnp.ones_like(nll)))
            w = jnp.linalg.norm(_leaf(grads, LAST_LAYER)) / (
                jnp.linalg.norm(_leaf(g_grads, LAST_LAYER)) + 1e-4)
            w = jax.lax.stop_gradient(jnp.clip(w, 0.0, 1e4)) * gan_w
            grads = jax.tree.map(lambda a, c: a + w * c, grads, g_grads)
            loss = loss + w * g

            def d_loss_fn(dp):
                real = disc.apply({"params": dp}, x)
                fake = disc.apply({"params": dp}, jax.lax.stop_gradient(rec))
                return hinge_d_loss(real, fake), (jnp.mean(real), jnp.mean(fake))

            (d_loss, (real, fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
                state["disc"])
            d_updates, new["disc_opt_state"] = tx_d.update(d_grads, state["disc_opt_state"],
                                                           state["disc"])
            new["disc"] = optax.apply_updates(state["disc"], d_updates)
            metrics.update(g_loss=g, adv_weight=w, d_loss=d_loss, logits_real=real,
                           logits_fake=fake)
        grad_norm = optax.global_norm(grads)
        updates, new["opt_state"] = tx.update(grads, state["opt_state"], params)
        new["params"] = {"vae": optax.apply_updates(params, updates)}
        metrics.update(loss=loss, grad_norm=grad_norm,
                       finite=jnp.isfinite(loss) & jnp.isfinite(grad_norm))
        return new, metrics

    return step_fn


class VAETask(ShardedTask):
    """Sharded init and steps of the autoencoder (a `loop.Task`)."""

    def __init__(self, config, mesh):
        vcfg = config.vae_train
        tx, tx_d = make_optimizers(vcfg)
        super().__init__(mesh, lambda: init_state(config, tx, tx_d), config.mesh.param_sharding)
        self._init = hosts.together(
            jax.jit(lambda: init_state(config, tx, tx_d), out_shardings=self.shardings), "init")
        self._plain = self.jit_step(make_step(config, tx, tx_d, False))
        self._adv = self.jit_step(make_step(config, tx, tx_d, True)) if use_gan(vcfg) else None
        self.gan_start = int(vcfg.gan_start_step)

    def init(self) -> State:
        return self._init()

    def step_fn(self, step: int) -> Callable:
        return self._adv if self._adv is not None and step >= self.gan_start else self._plain

    def put_batch(self, local: Batch) -> Batch:
        return super().put_batch({"image": local["image"]})


def vae_checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, "vae_checkpoints")


def train_loop(config, workdir: str, batches: Iterator[Batch], mesh=None) -> Any:
    """Train the autoencoder to `vae_train.num_steps` (resuming); return its parameters."""
    resume_check.check(config, vae_checkpoint_dir(workdir), "vae")  # another model saved?
    mesh = mesh_lib.make_mesh(config) if mesh is None else mesh
    settings = LoopSettings.of("vae", vae_checkpoint_dir(workdir), config.vae_train)
    state = fit(VAETask(config, mesh), workdir, batches, settings,
                  arch=arch_from_config(config), config_json=config_json(config))
    return state["params"]["vae"]
