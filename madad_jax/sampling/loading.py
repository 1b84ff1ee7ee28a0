"""A checkpoint as `(config, models, params)`, without the training code path.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from madad_jax.config import default_config
from madad_jax.core import checkpoint as ckpt
from madad_jax.data.errors import BadInputError

log = logging.getLogger("madad_jax.analysis")


class Models(NamedTuple):
    """The Flax modules of a checkpoint (`params["vae"]`, `params["denoiser"]`)."""

    vae: Any
    denoiser: Any


class Restored(NamedTuple):
    params: Any  # {"vae": ..., "denoiser": ...}, numpy leaves
    arch: dict[str, Any]
    config: dict[str, Any] | None  # the run's full config, for training checkpoints
    directory: str  # the CheckpointManager directory
    step: int
    ema: bool = False  # params["denoiser"] holds the EMA weights (train.ema)


def checkpoint_dir(path: str | os.PathLike) -> str:
    """The CheckpointManager directory named by `path`: a workdir (its `checkpoints/`) or
    the checkpoint directory itself."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no such checkpoint or workdir", path)
    if not os.path.isdir(path):
        raise BadInputError(path, "expected a checkpoint directory or a workdir")
    sub = os.path.join(path, "checkpoints")
    if os.path.isdir(sub) and _steps(sub):
        return sub
    if _steps(path):
        return path
    raise BadInputError(path, "no checkpoint found (neither it nor its checkpoints/ holds a step)")


def _steps(directory: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def restore(path: str | os.PathLike, step: int | None = None, ema: bool = True) -> Restored:
    """Read `(params, arch, config, directory, step, ema)` from a checkpoint or a workdir.

    With `ema` and a checkpoint that holds EMA weights (`train.ema`), `params["denoiser"]` are
    the EMA weights.
    """
    directory = checkpoint_dir(path)
    try:
        with ckpt.manager(directory) as mngr:
            step = mngr.latest_step() if step is None else int(step)
            if step is None:
                raise BadInputError(directory, "no checkpoint found")
            items = ckpt.step_items(mngr, step)
            missing = {"params", "arch"} - items
            if missing:
                raise BadInputError(os.path.join(directory, str(step)),
                                    f"checkpoint lacks item(s) {sorted(missing)}")
            args = dict(params=ocp.args.StandardRestore(), arch=ocp.args.JsonRestore())
            if "config" in items:
                args["config"] = ocp.args.JsonRestore()
            use_ema = ema and "ema" in items
            if use_ema:
                args["ema"] = ocp.args.StandardRestore()
            out = mngr.restore(step, args=ocp.args.Composite(**args))
    except (BadInputError, FileNotFoundError):
        raise
    except Exception as err:  # orbax raises many types for damaged checkpoints
        raise BadInputError(directory, f"not a readable checkpoint ({type(err).__name__}: "
                                       f"{err})") from err
    params = jax.tree.map(np.asarray, out["params"])
    if not isinstance(params, dict) or not {"vae", "denoiser"} <= set(params):
        raise BadInputError(directory, "checkpoint params lack 'vae' and 'denoiser'")
    if use_ema:
        params = dict(params, denoiser=jax.tree.map(np.asarray, out["ema"]))
    stored = out["config"] if "config" in out and out["config"] else None
    return Restored(params, dict(out["arch"]), stored, directory, int(step), use_ema)


def restore_for_run(config, workdir: str) -> Restored:
    """The checkpoint a run reads: `config.checkpoint`, else the workdir's latest; the EMA
    weights unless `evaluate.use_ema` is off."""
    return restore(config.checkpoint or workdir, ema=bool(config.evaluate.get("use_ema", True)))


def config_from_checkpoint(
    arch: dict[str, Any], stored: dict[str, Any] | None = None,
    base: ml_collections.ConfigDict | None = None,
) -> ml_collections.ConfigDict:
    """`base` (default: `default_config()`), updated with a stored run config, then `arch`."""
    config = default_config() if base is None else _copy(base)
    if stored:
        _merge(config, stored)
    ckpt.apply_arch(config, arch)
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
            v = ckpt._tuplify(v) if isinstance(v, list | dict) else v
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
