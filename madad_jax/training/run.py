"""The training modes: `mode=train` (the denoiser, after its run plan) and `mode=train_vae`."""

from __future__ import annotations

import sys
from typing import Any

from etils import epath

from madad_jax.core import hosts, locks
from madad_jax.data import sources
from madad_jax.training import autoencoder
from madad_jax.training.denoiser import train_loop
from madad_jax.training.loop import State
from madad_jax.training.plan import make_plan


def run(config, workdir: str) -> State:
    """`mode=train`: (train the VAE if asked, then) train the denoiser; resumes in `workdir`.

    `workdir` may be a local path or a bucket URL (gs://...) that every host sees.
    """
    with locks.hold(workdir, "training", enabled=hosts.is_main()):
        return _train(config, workdir)


def _train(config, workdir: str) -> State:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if config.checkpoint and hosts.is_main():
        print(f"note: training ignores checkpoint={config.checkpoint} (evaluation reads it); "
              "vae_train.checkpoint sets the autoencoder", file=sys.stderr)
    plan = make_plan(config, workdir)
    cfg = plan.config
    path = plan.latent_cache or plan.source
    batches = sources.train_batches(cfg, path, int(cfg.train.batch_size),
                                    latents=bool(plan.latent_cache),
                                    exact_epochs=bool(cfg.train.exact_epochs))
    val = sources.validation_batches(cfg, workdir)
    return train_loop(cfg, workdir, batches, plan.vae_params, val, norm=plan.norm,
                      steps_per_epoch=plan.steps_per_epoch)


def run_autoencoder(config, workdir: str) -> Any:
    """`mode=train_vae`: train only the autoencoder, into `DIR/vae_checkpoints/`.

    A denoiser run then uses it with `--config.vae_train.checkpoint=DIR/vae_checkpoints`.
    """
    with locks.hold(workdir, "training", enabled=hosts.is_main()):
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        source = sources.training_source(config, workdir)
        batches = sources.train_batches(config, source, int(config.vae_train.batch_size))
        return autoencoder.train_loop(config, workdir, batches)
