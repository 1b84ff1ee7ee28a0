"""Checkpoints for scripts and notebooks: restore a model without the training code path.

    from madad_jax import analysis
    config, models, params = analysis.load("runs/demo")          # a workdir or a checkpoint dir
    out = analysis.anomaly_maps(config, models, params, images)  # images (N,H,W[,1]) in [-1, 1]
    out["anomaly_map"], out["sample"], out["mean_anomalous"]

`load` reads only the `params`, `arch` and (when present) `config` items of an Orbax
checkpoint: the architecture comes from the checkpoint itself, so the models match its
parameters whatever config file the run used.
"""

from madad_jax.sampling.inferencer import anomaly_maps, mask_head
from madad_jax.sampling.loading import (
    Models,
    Restored,
    build_models,
    checkpoint_dir,
    config_from_checkpoint,
    load,
    restore,
)

__all__ = ["Models", "Restored", "anomaly_maps", "build_models", "checkpoint_dir",
           "config_from_checkpoint", "load", "mask_head", "restore"]
