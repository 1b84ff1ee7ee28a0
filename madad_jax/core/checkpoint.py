"""Orbax checkpoints: model parameters plus the architecture they belong to.

A checkpoint directory is an Orbax `CheckpointManager` directory. Every step holds at least
the items `params` (a pytree `{"vae": ..., "denoiser": ...}`) and `arch` (JSON: the
`image_size`, `latent_scale`, `latent_whitening`, `vae` and `model` config sub-trees).
Training checkpoints add their own items (optimizer state, EMA, data iterator, ...) beside these.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

ARCH_KEYS = ("image_size", "latent_scale", "latent_whitening", "vae", "model")


def arch_from_config(config) -> dict[str, Any]:
    """The part of a config that fixes the parameter shapes, as plain JSON."""
    out = {}
    for k in ARCH_KEYS:
        v = config.get(k)
        if v is None:
            continue
        out[k] = v.to_dict() if hasattr(v, "to_dict") else v
    return _jsonable(out)


def apply_arch(config, arch: dict[str, Any]) -> None:
    """Overwrite `config`'s architecture keys in place with those stored in a checkpoint."""
    with config.unlocked():
        for k in ARCH_KEYS:
            if k not in arch:
                continue
            if isinstance(arch[k], dict) and k in config:
                config[k].update(_tuplify(arch[k]))
            else:
                config[k] = arch[k]


def _abs(directory: str) -> str:
    """An absolute local path; URLs (gs://...) are left as they are."""
    directory = os.fspath(directory)
    return directory if "://" in directory else os.path.abspath(directory)


def manager(directory: str, max_to_keep: int | None = None, **kw) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, **kw)
    return ocp.CheckpointManager(_abs(directory), options=options)


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
    if not epath.Path(_abs(directory)).is_dir():
        return None
    with manager(directory) as mngr:
        return mngr.latest_step()


def load_params(directory: str, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restore `(params, arch)` as numpy pytrees, without any training code."""
    _require_dir(directory)
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


def load_arch(directory: str, step: int | None = None) -> dict[str, Any]:
    """Only the `arch` item of a checkpoint (no arrays are read)."""
    _require_dir(directory)
    with manager(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint found")
        return mngr.restore(step, args=ocp.args.Composite(arch=ocp.args.JsonRestore()))["arch"]


def _require_dir(directory: str) -> None:
    # Reading must not create the directory (the manager would).
    if not epath.Path(_abs(directory)).is_dir():
        raise FileNotFoundError(f"{directory}: no such checkpoint directory")


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


# ------------------------------------------------------------------- training checkpoints
#
# A training checkpoint step holds, beside `params` and `arch`:
#   opt_state  the optimizer state (StandardSave)
#   ema        EMA denoiser parameters, when train.ema is on (StandardSave)
#   rng        the base PRNG key (StandardSave); step keys are fold_in(rng, step)
#   step       {"step": int} (JSON)
#   data_iter  one JSON file per process: the data iterator's position
#   config     the full run config (JSON)
#   metrics    the last logged training metrics (JSON)


class IteratorStateHandler(ocp.CheckpointHandler):
    """Saves a data iterator state captured by the caller, one file per process.

    Unlike grain's own handler, the state is taken synchronously by the training loop before
    the save starts, so an async save can never record a later iterator position.
    """

    def save(self, directory, args: IteratorStateSave):
        directory.joinpath(_iter_file()).write_text(args.state)

    def restore(self, directory, args: IteratorStateRestore | None = None) -> str:
        path = directory / _iter_file()
        if not path.exists():
            found = sorted(p.name for p in directory.iterdir())
            raise ValueError(
                f"{path}: no data iterator state for this process (found {found}); resume "
                "with the same number of processes that wrote the checkpoint"
            )
        return path.read_text()

    def metadata(self, directory):
        return None

    def structure(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


def _iter_file() -> str:
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
    state: str


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
    pass


def train_manager(directory: str, keep: int | None, async_save: bool = True):
    """The run's CheckpointManager: keep the newest `keep`, async saves, tmp dirs cleaned.

    Orbax writes each step into a temporary directory and renames it when complete, so a
    process killed mid-save leaves no step that a later restore would pick up.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep and keep > 0 else None,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
    )
    return ocp.CheckpointManager(_abs(directory), options=options)


def encode_iterator_state(state: Any) -> str:
    """JSON text for a grain iterator state (a dict for datasets, bytes for DataLoader)."""
    if isinstance(state, bytes):
        return json.dumps({"bytes_b64": base64.b64encode(state).decode("ascii")})
    return json.dumps({"json": state})


def decode_iterator_state(text: str) -> Any:
    obj = json.loads(text)
    if "bytes_b64" in obj:
        return base64.b64decode(obj["bytes_b64"])
    return obj["json"]


def save_train_state(
    mngr: ocp.CheckpointManager,
    step: int,
    state: dict[str, Any],
    arch: dict[str, Any],
    config_json: dict[str, Any],
    data_state: Any = None,
    metrics: dict[str, Any] | None = None,
) -> bool:
    """Start an (async) save of a training state at `step`; returns whether it started.

    Every entry of `state` but `step` (an int, stored as JSON) becomes one StandardSave item
    (`params`, `opt_state`, `rng`, `ema`, ...).
    """
    items = {k: ocp.args.StandardSave(_wrap(k, v)) for k, v in state.items()
             if k != "step" and v is not None}
    items.update(
        arch=ocp.args.JsonSave(_jsonable(arch)),
        step=ocp.args.JsonSave({"step": int(step)}),
        config=ocp.args.JsonSave(_jsonable(config_json)),
        metrics=ocp.args.JsonSave(_jsonable(metrics or {})),
    )
    if data_state is not None:
        items["data_iter"] = IteratorStateSave(encode_iterator_state(data_state))
    return mngr.save(step, args=ocp.args.Composite(**items), force=True)


def _wrap(name: str, tree: Any) -> Any:
    # StandardSave needs a container; the PRNG key is a bare array.
    return {"key": tree} if name == "rng" else tree


def step_items(mngr: ocp.CheckpointManager, step: int) -> set[str]:
    """The item names stored at `step`."""
    path = epath.Path(mngr.directory) / str(step)
    return {p.name for p in path.iterdir() if p.is_dir()}


def restore_train_state(
    mngr: ocp.CheckpointManager, step: int, abstract_state: dict[str, Any]
) -> tuple[dict[str, Any], Any]:
    """Restore `(state, data_iterator_state or None)` at `step`.

    `abstract_state` gives the items to read and their shapes, dtypes and shardings
    (`jax.ShapeDtypeStruct` leaves with `sharding`), so each process reads only its shards.
    """
    have = step_items(mngr, step)
    names = [k for k, v in abstract_state.items() if k != "step" and v is not None]
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(
            f"{mngr.directory}/{step}: checkpoint lacks {missing}; it was written with a "
            "different configuration (train.ema, vae_train.gan_weight?)"
        )
    items = {n: ocp.args.StandardRestore(_wrap(n, abstract_state[n])) for n in names}
    items["step"] = ocp.args.JsonRestore()
    if "data_iter" in have:
        items["data_iter"] = IteratorStateRestore()
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    state = {n: out[n] for n in names}
    if "rng" in state:
        state["rng"] = state["rng"]["key"]
    state["step"] = int(out["step"]["step"])
    data_state = decode_iterator_state(out["data_iter"]) if "data_iter" in have else None
    return state, data_state
