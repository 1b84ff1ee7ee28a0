"""Orbax checkpoints: model parameters plus the architecture they belong to.

A checkpoint directory is an Orbax `CheckpointManager` directory. Every step holds at least
the items `params` (a pytree `{"vae": ..., "denoiser": ...}`) and `arch` (JSON: the
`image_size`, `latent_scale`, `vae` and `model` config sub-trees). Training checkpoints add
their own items (optimizer state, EMA, data iterator, ...) beside these.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

ARCH_KEYS = ("image_size", "latent_scale", "vae", "model")


def arch_from_config(config) -> dict[str, Any]:
    """The part of a config that fixes the parameter shapes, as plain JSON."""
    out = {}
    for k in ARCH_KEYS:
        v = config[k]
        out[k] = v.to_dict() if hasattr(v, "to_dict") else v
    return _jsonable(out)


def apply_arch(config, arch: dict[str, Any]) -> None:
    """Overwrite `config`'s architecture keys in place with those stored in a checkpoint."""
    with config.unlocked():
        for k in ARCH_KEYS:
            if k not in arch:
                continue
            if isinstance(arch[k], dict):
                config[k].update(_tuplify(arch[k]))
            else:
                config[k] = arch[k]


def manager(directory: str, max_to_keep: int | None = None, **kw) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, **kw)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save_params(directory: str, params: Any, arch: dict[str, Any], step: int = 0) -> None:
    """Write a params-only checkpoint (for imported or exported weights)."""
    params = jax.tree.map(np.asarray, params)
    with manager(directory) as mngr:
        mngr.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                arch=ocp.args.JsonSave(_jsonable(arch)),
            ),
            force=True,
        )
        mngr.wait_until_finished()


def latest_step(directory: str) -> int | None:
    if not os.path.isdir(directory):
        return None
    with manager(directory) as mngr:
        return mngr.latest_step()


def load_params(directory: str, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restore `(params, arch)` as numpy pytrees, without any training code."""
    with manager(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint found")
        out = mngr.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(), arch=ocp.args.JsonRestore()
            ),
        )
    return out["params"], out["arch"]


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _tuplify(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tuplify(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuplify(v) for v in x)
    return x
