"""The training modes: `mode=train` (the denoiser, after its run plan) and `mode=train_vae`.

`train` reads top to bottom: the run plan (which may train the autoencoder first), the data,
the task, then the resumable loop `fit`. `madad_jax.main` holds the workdir's lock.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from etils import epath

from madad_jax.core import hosts
from madad_jax.core import mesh as mesh_lib
from madad_jax.data import sources
from madad_jax.models.arch import arch_from_config
from madad_jax.training import autoencoder, denoiser
from madad_jax.training.loop import State, config_json, fit
from madad_jax.training.plan import make_plan


def train(config, workdir: str, probe: Callable[[Any, str], Any] | None = None) -> State:
    """`mode=train`: (train the VAE if asked, then) train the denoiser; resumes in `workdir`.

    `workdir` may be a local path or a bucket URL (gs://...) that every host sees. `probe`
    (`evaluation.during_training.probe`, passed in by `main`: training may not import
    evaluation) makes the hook of `train.eval_every_steps` from the plan's config.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if config.checkpoint and hosts.is_main():
        print(f"note: training ignores checkpoint={config.checkpoint} (evaluation reads it); "
              "vae_train.checkpoint sets the autoencoder", file=sys.stderr)
    plan = make_plan(config, workdir)
    cfg = plan.config
    batches = sources.train_batches(cfg, plan.latent_cache or plan.source,
                                    int(cfg.train.batch_size), latents=bool(plan.latent_cache),
                                    exact_epochs=bool(cfg.train.exact_epochs))
    val = sources.validation_batches(cfg, workdir)
    task = denoiser.make_task(cfg, mesh_lib.make_mesh(cfg), plan.vae_params, plan.norm,
                              plan.steps_per_epoch)
    settings = denoiser.loop_settings(cfg, workdir, plan.steps_per_epoch)
    return fit(task, workdir, batches, settings, arch=arch_from_config(cfg),
               config_json=config_json(cfg), val_batches=val,
               on_step=probe(cfg, workdir) if probe is not None else None)



def run_autoencoder(config, workdir: str) -> Any:
    """`mode=train_vae`: train only the autoencoder, into `DIR/vae_checkpoints/`.

    A denoiser run then uses it with `--config.vae_train.checkpoint=DIR/vae_checkpoints`.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    source = sources.training_source(config, workdir)
    batches = sources.train_batches(config, source, int(config.vae_train.batch_size))
    return autoencoder.train_loop(config, workdir, batches)
