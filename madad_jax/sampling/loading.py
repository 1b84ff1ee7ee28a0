"""A checkpoint as `(config, models, params)`, without the training code path; the reading
itself is `madad_jax.core.checkpoint.restore_inference`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, NamedTuple

import ml_collections
from etils import epath

from madad_jax.config import default_config
from madad_jax.core import checkpoint as ckpt
from madad_jax.core.errors import InputError
from madad_jax.data.errors import BadInputError
from madad_jax.models.arch import apply_arch, mismatch_line, tuplify

log = logging.getLogger("madad_jax.analysis")


class Models(NamedTuple):
    """The Flax modules of a checkpoint (`params["vae"]`, `params["denoiser"]`)."""

    vae: Any
    denoiser: Any


Restored = ckpt.Restored


def checkpoint_dir(path: str | os.PathLike) -> str:
    """The CheckpointManager directory named by `path`: a workdir (its `checkpoints/`) or
    the checkpoint directory itself."""
    try:
        return ckpt.find_directory(path)
    except ckpt.CheckpointError as err:
        raise BadInputError(err.path, err.problem) from err


def restore(path: str | os.PathLike, step: int | None = None, ema: bool = True) -> Restored:
    """Read `(params, arch, config, directory, step, ema)` from a checkpoint or a workdir.

    With `ema` and a checkpoint that holds EMA weights (`train.ema`), `params["denoiser"]` are
    the EMA weights. An unusable checkpoint raises BadInputError ("PATH: PROBLEM").
    """
    try:
        return ckpt.restore_inference(path, step, ema)
    except ckpt.CheckpointError as err:
        raise BadInputError(err.path, err.problem) from err


# `evaluate.checkpoint` -> the directory of a training run that holds it.
RUN_CHECKPOINTS = {"latest": "", "best_loss": "best_checkpoint", "best_mse": "best_mse",
                   "best_mask_prediction": "best_mask_prediction"}


def run_checkpoint(config, workdir: str) -> str:
    """The checkpoint a run reads: `config.checkpoint`, else the one of the workdir that
    `evaluate.checkpoint` names (latest | best_mse | best_mask_prediction | best_loss)."""
    if config.checkpoint:
        return config.checkpoint
    which = config.evaluate.checkpoint
    if which not in RUN_CHECKPOINTS:
        raise InputError(f"evaluate.checkpoint must be one of {tuple(RUN_CHECKPOINTS)}, "
                         f"not {which!r}")
    path = os.path.join(workdir, RUN_CHECKPOINTS[which]) if RUN_CHECKPOINTS[which] else workdir
    if which != "latest" and not epath.Path(path).exists():
        raise BadInputError(path, f"no {which} checkpoint (evaluate.checkpoint={which}; it is "
                                  "written by training with validation data)")
    return path


def restore_for_run(config, workdir: str, data_size: int | None = None,
                    warn: bool = False) -> Restored:
    """The checkpoint a run reads (`run_checkpoint`); the EMA weights unless
    `evaluate.use_ema` is off. Before any work: a one-line refusal when its model does not
    take the `data_size`-square slices the run's data has; with `warn`, a `warning: ` line
    naming the architecture keys where it and `config` differ (the checkpoint's are used)."""
    r = restore(run_checkpoint(config, workdir), ema=bool(config.evaluate.use_ema))
    check_fit(r, data_size, "the config's data")
    line = mismatch_line(config, r.arch, r.directory) if warn else None
    if line:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    return r


def check_fit(r: Restored, data_size: int | None, what: str) -> None:
    """Refuse (InputError) when `r`'s model takes other slices than `data_size` square."""
    size = r.arch.get("image_size")
    if data_size is None or size is None or int(size) == int(data_size):
        return
    raise InputError(
        f"{r.directory} holds a model for {size}x{size} slices, but {what} is "
        f"{data_size}x{data_size}: they cannot fit; use a checkpoint trained at "
        f"{data_size}x{data_size}, or data made at {size}x{size} (--config.image_size={size} "
        "for the demo data, convert --image-size for shards)")


def config_from_checkpoint(
    arch: dict[str, Any], stored: dict[str, Any] | None = None,
    base: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
    """`base` (default: `default_config()`), updated with a stored run config, then `arch`."""
    config = default_config() if base is None else _copy(base)
    if stored:
        _merge(config, stored)
    apply_arch(config, arch)
    return config


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads(config.to_json_best_effort()))


def _merge(config: ml_collections.ConfigDict, values: dict[str, Any], prefix: str = "") -> None:
    with config.unlocked():
        for k, v in values.items():
            here = config.get(k) if k in config else None
            if isinstance(here, ml_collections.ConfigDict) and isinstance(v, dict):
                _merge(here, v, f"{prefix}{k}.")
                continue
            v = tuplify(v) if isinstance(v, list | dict) else v
            try:
                config[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v
            except (TypeError, ValueError) as err:
                log.warning("stored config key %s%s not restored: %s", prefix, k, err)


def build_models(config) -> Models:
    from madad_jax.models import build_denoiser, build_vae

    return Models(build_vae(config), build_denoiser(config))


def load(
    path: str | os.PathLike, step: int | None = None, ema: bool = True
) -> tuple[ml_collections.ConfigDict, Models, Any]:
    """`(config, models, params)` from a workdir or checkpoint directory (latest step); the
    denoiser's EMA weights when the checkpoint has them and `ema`."""
    r = restore(path, step, ema)
    config = config_from_checkpoint(r.arch, r.config)
    with config.unlocked():
        config.checkpoint = r.directory
    return config, build_models(config), r.params
