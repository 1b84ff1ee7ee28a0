"""Training the denoiser of MAD-AD on a device mesh, with exact resume.

The training state is one pytree:

    {"params": {"vae": frozen, "denoiser": trained}, "opt_state": ..., "ema": ... (optional),
     "step": int32, "rng": base key}

`train_step(state, batch) -> (state, metrics)` is pure and runs under `jax.jit` with the
state donated. Step `s` draws all its randomness from `fold_in(rng, s)`, and the data
iterator's position is checkpointed with the state, so a run resumed from any checkpoint
repeats the uninterrupted run bit for bit (on CPU)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from madad_jax import diffusion
from madad_jax.core import checkpoint as ckpt
from madad_jax.core import hosts
from madad_jax.core.errors import InputError
from madad_jax.diffusion.latent_norm import LatentNorm
from madad_jax.models import build_denoiser, build_vae, sample_posterior
from madad_jax.models.adapters import denoiser_fn, vae_encode
from madad_jax.training.loop import (
    Batch,
    LoopSettings,
    ShardedTask,
    State,
    new_state,
)
from madad_jax.training.optimizer import lr_schedule, make_optimizer

LATENT_MEAN, LATENT_LOGVAR = "latent_mean", "latent_logvar"
CONTRAST_MEAN = "latent_contrast_mean"  # training.latent_cache.CONTRAST_MEAN


def latent_shape(config) -> tuple[int, int, int]:
    """(h, w, c) of a latent for `config.image_size`."""
    vae = build_vae(config)
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, vae.in_channels),
                             jnp.float32)
    abstract = jax.eval_shape(lambda x: vae.init(jax.random.key(0), x, method=vae.encode), x)
    mean, _ = jax.eval_shape(
        lambda p, x: vae.apply(p, x, method=vae.encode), abstract, x
    )
    return tuple(mean.shape[1:])


def init_vae_params(config, key: jax.Array) -> Any:
    """Freshly initialized autoencoder parameters (encoder and decoder)."""
    vae = build_vae(config)
    x = jnp.zeros((1, config.image_size, config.image_size, vae.in_channels), jnp.float32)
    return jax.jit(lambda k: vae.init(k, x)["params"])(key)


def init_denoiser_params(config, key: jax.Array) -> Any:
    model = build_denoiser(config)
    h, w, c = latent_shape(config)
    z = jnp.zeros((1, h, w, c), jnp.float32)
    return model.init(key, z, jnp.zeros((1,), jnp.int32), False)["params"]


def init_state(config, vae_params: Any, tx: optax.GradientTransformation) -> State:
    """A fresh training state (pure: jit it with `out_shardings` to build it sharded)."""
    key = jax.random.PRNGKey(int(config.train.seed))
    den = init_denoiser_params(config, jax.random.fold_in(key, 1))
    extra = {"ema": jax.tree.map(jnp.copy, den)} if config.train.ema else {}
    return new_state({"vae": vae_params, "denoiser": den}, tx, key, **extra)


def batch_latents(vae, vae_params, batch: Batch, key: jax.Array, norm: LatentNorm) -> jax.Array:
    """z0 = the normalized VAE posterior sample, from images or cached posterior moments."""
    if LATENT_MEAN in batch:
        mean, logvar = batch[LATENT_MEAN], batch[LATENT_LOGVAR]
    else:
        mean, logvar = vae_encode(vae, vae_params, batch["image"])
    z = sample_posterior(key, mean.astype(jnp.float32), logvar.astype(jnp.float32))
    return jax.lax.stop_gradient(norm.to_model(z))


def _mask2d(mask: jax.Array | None) -> jax.Array | None:
    """(B,H,W,1) or (B,H,W) brain masks as (B,H,W)."""
    return mask[..., 0] if mask is not None and mask.ndim == 4 else mask


def make_train_step(config, tx: optax.GradientTransformation,
                    norm: LatentNorm | None = None,
                    steps_per_epoch: int | None = None) -> Callable:
    """The pure `train_step(state, batch) -> (state, metrics)`.

    `norm` maps VAE latents to the diffusion's (the run plan's; default: `config`'s own
    latent_scale / latent_whitening). A batch with a `weight` (B,) key is a padded partial
    batch: the loss is the mean over its real samples (exact epochs).
    """
    vae = build_vae(config, dtype=config.model.dtype)
    apply_fn = denoiser_fn(build_denoiser(config))
    schedule = lr_schedule(config.train, steps_per_epoch)
    norm = LatentNorm.from_config(config) if norm is None else norm
    ema_decay = float(config.train.ema_decay)

    def train_step(state: State, batch: Batch) -> tuple[State, dict[str, jax.Array]]:
        step = state["step"]
        k_post, k_loss = jax.random.split(jax.random.fold_in(state["rng"], step))
        z0 = batch_latents(vae, state["params"]["vae"], batch, k_post, norm)
        brainmask = _mask2d(batch.get("brainmask"))
        weight = batch.get("weight")
        alt = batch.get(CONTRAST_MEAN)
        if alt is not None:  # the contrast-changed slice's posterior mean, normalized
            alt = jax.lax.stop_gradient(norm.to_model(alt.astype(jnp.float32)))

        def loss(den):
            return diffusion.loss_fn(apply_fn, den, z0, brainmask, k_loss, config, train=True,
                                     weight=weight, alt=alt)

        den = state["params"]["denoiser"]
        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(den)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], den)
        den = optax.apply_updates(den, updates)
        new = dict(state, params=dict(state["params"], denoiser=den), opt_state=opt_state,
                   step=step + 1)
        if "ema" in state:
            new["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                      state["ema"], den)
        metrics = dict(aux, grad_norm=grad_norm, lr=schedule(step),
                       finite=jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm))
        if weight is not None:
            metrics["real_samples"] = jnp.sum(weight)
        return new, metrics

    return train_step


def validation_masking(config) -> ml_collections.ConfigDict:
    """The config the reference's validation masks with: its own patch probabilities and
    noised fraction (`diffusion.val_patch_probs`, `val_max_noised_frac`), a new value."""
    d = config.diffusion
    view = ml_collections.ConfigDict(config.to_dict())
    view.diffusion.update(patch_probs=tuple(d.val_patch_probs),
                          max_noised_frac=float(d.val_max_noised_frac))
    return view


def make_eval_step(config, norm: LatentNorm | None = None) -> Callable:
    """`eval_step(params, batch, key) -> metrics`: the loss without dropout (validation).

    With `train.validation=reference` the clean masks are drawn as the reference's
    validation draws them (`validation_masking`); a `weight` key marks a padded last batch.
    """
    vae = build_vae(config, dtype=config.model.dtype)
    apply_fn = denoiser_fn(build_denoiser(config))
    norm = LatentNorm.from_config(config) if norm is None else norm
    loss_cfg = validation_masking(config) if config.train.validation == "reference" else config

    def eval_step(params, batch, key):
        k_post, k_loss = jax.random.split(key)
        z0 = batch_latents(vae, params["vae"], batch, k_post, norm)
        mask = _mask2d(batch.get("brainmask"))
        _, aux = diffusion.loss_fn(apply_fn, params["denoiser"], z0, mask, k_loss, loss_cfg,
                                   train=False, weight=batch.get("weight"))
        return aux

    return eval_step


class DenoiserTask(ShardedTask):
    """The jitted, sharded init / train / eval functions of the denoiser for one mesh."""

    def __init__(self, config, mesh, vae_abstract: Any, vae_params: Any | None = None,
                 norm: LatentNorm | None = None, steps_per_epoch: int | None = None):
        self.config = config
        self.vae_params = vae_params
        self.tx = make_optimizer(config.train, steps_per_epoch)
        super().__init__(mesh, lambda v: init_state(config, v, self.tx),
                         config.mesh.param_sharding, vae_abstract)
        self._vae_sharding = self.shardings["params"]["vae"]
        self._init = hosts.together(
            jax.jit(lambda v: init_state(config, v, self.tx),
                    in_shardings=(self._vae_sharding,), out_shardings=self.shardings), "init")
        self.step = self.jit_step(make_train_step(config, self.tx, norm, steps_per_epoch))
        self.eval = hosts.together(
            jax.jit(make_eval_step(config, norm),
                    in_shardings=(self.shardings["params"], self.batch_sharding,
                                  self.replicated),
                    out_shardings=self.replicated), "eval")

    def init(self, vae_params: Any | None = None) -> State:
        """A fresh sharded state around the given (frozen) VAE parameters."""
        vae_params = self.vae_params if vae_params is None else vae_params
        if vae_params is None:
            raise InputError("no autoencoder to train the denoiser with: set "
                             "vae_train.enabled, vae_train.checkpoint or checkpoint")
        vae_params = jax.tree.map(
            lambda x: x if isinstance(x, jax.Array) else np.asarray(x, np.float32), vae_params)
        return self._init(jax.device_put(vae_params, self._vae_sharding))

    def step_fn(self, step: int) -> Callable:
        """The one compiled step: the denoiser's update does not change with `step` (the
        `Task` protocol passes it for the autoencoder's discriminator start)."""
        return self.step

    @property
    def best_copies(self) -> tuple[tuple[str, str], ...]:
        if self.config.train.validation == "reference":  # the reference's two best files
            return (("best_mse", "mse_sum"), ("best_mask_prediction", "mask_loss_sum"))
        return (("best_checkpoint", "loss"),)

    def validate(self, state: State, batches: Iterable[Batch]) -> dict[str, float]:
        """Mean loss terms over the validation batches with fixed keys (comparable across
        steps), and, as the reference sums them, `mse_sum` / `mask_loss_sum`."""
        t = self.config.train
        seed = int(t.val_seed) if t.validation == "reference" else int(t.seed) + 1_000_003
        key = jax.random.PRNGKey(seed)
        rows = [self.eval(state["params"], self.put_batch(b), jax.random.fold_in(key, i))
                for i, b in enumerate(batches)]
        rows = jax.device_get(rows)
        out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        out.update(mse_sum=float(np.sum([r["mse"] for r in rows])),
                   mask_loss_sum=float(np.sum([r["mask_loss"] for r in rows])))
        return out


def epoch_settings(tcfg, steps_per_epoch: int | None) -> dict[str, int]:
    """The loop's epoch-based settings: validation every `val_every_epochs` epochs after the
    first (as the reference validates after epochs 11, 21, ...), LR logs per epoch (with
    exact epochs or the per-epoch LR schedule)."""
    if not steps_per_epoch:
        return {}
    out = {}
    if tcfg.exact_epochs or tcfg.lr_schedule == "reference":  # an epoch means something
        out["steps_per_epoch"] = int(steps_per_epoch)
    if tcfg.validation == "reference":
        out.update(val_every=int(tcfg.val_every_epochs) * int(steps_per_epoch),
                   val_after=int(steps_per_epoch))
    return out


def checkpoint_dir(workdir: str) -> str:
    """The denoiser run's checkpoints (`core.checkpoint.run_directory`)."""
    return ckpt.run_directory(workdir)


def make_task(config, mesh, vae_params: Any | None, norm: LatentNorm | None = None,
              steps_per_epoch: int | None = None) -> DenoiserTask:
    """The denoiser's task on `mesh`, around the frozen autoencoder `vae_params`."""
    vae_abstract = jax.eval_shape(lambda: init_vae_params(config, jax.random.PRNGKey(0)))
    return DenoiserTask(config, mesh, vae_abstract, vae_params, norm, steps_per_epoch)


def loop_settings(config, workdir: str, steps_per_epoch: int | None = None) -> LoopSettings:
    """How long and how often the denoiser trains (`config.train`, the epoch settings)."""
    return LoopSettings.of("train", checkpoint_dir(workdir), config.train,
                           **epoch_settings(config.train, steps_per_epoch))

