"""Orbax checkpoints: model parameters plus the architecture they belong to.

A checkpoint directory is an Orbax `CheckpointManager` directory. Every step holds at least
the items `params` (a pytree `{"vae": ..., "denoiser": ...}`) and `arch` (JSON: the
`image_size`, `latent_scale`, `latent_whitening`, `vae` and `model` config sub-trees).
Training checkpoints add their own items (optimizer state, EMA, data iterator, ...) beside these.

The API, by use:
- architecture: `load_arch` (building and applying one: `madad_jax.models.arch`);
- params-only checkpoints: `save_params`, `load_params`, `latest_step`;
- training state: `train_manager`, `save_train_state`, `restore_train_state`, `step_items`;
- inference: `find_directory`, `restore_inference` (params, arch, run config, EMA weights);
- the best-validation copy: `best_manager`, `save_best`, `best_loss`.

What goes wrong (damaged steps, OS errors, Orbax's stray output) is `core.damage`; the data
iterator's item is `core.iterator_state`.
"""

from __future__ import annotations

import math
import os
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from madad_jax.core.damage import (
    CheckpointError,
    DamagedCheckpoint,
    newest_readable,
    restore_items,
)
from madad_jax.core.errors import InputError
from madad_jax.core.files import to_json
from madad_jax.core.iterator_state import (
    IteratorStateRestore,
    IteratorStateSave,
    decode_iterator_state,
    encode_iterator_state,
)

__all__ = ["RUN_DIR", "CheckpointError", "DamagedCheckpoint", "Restored", "best_loss",
           "best_manager", "best_metrics", "check_finite", "find_directory", "latest_step",
           "load_arch", "load_params", "manager", "restore_inference", "restore_items",
           "restore_newest", "restore_train_state", "run_directory", "save_best", "save_params",
           "save_train_state", "step_items", "train_manager"]


RUN_DIR = "checkpoints"  # a training run's checkpoints: WORKDIR/checkpoints/


def run_directory(workdir: str) -> str:
    """The CheckpointManager directory of the training run in `workdir`."""
    return os.path.join(workdir, RUN_DIR)


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
                arch=ocp.args.JsonSave(to_json(arch)),
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
    _, out = _restore(directory, step, params=local_restore(directory, step, "params"),
                      arch=ocp.args.JsonRestore())
    return jax.tree.map(np.asarray, out["params"]), out["arch"]


def local_restore(directory: str, step: int, name: str) -> ocp.args.StandardRestore:
    """Restore arguments for item `name` that place every array on this process's first
    device, whatever the topology that saved it (a checkpoint of a multi-process run reads
    on one machine). Unreadable metadata leaves the item's own restore to report it."""
    try:
        meta = ocp.StandardCheckpointHandler().metadata(
            epath.Path(_abs(directory)) / str(step) / name)
    except Exception:  # noqa: BLE001 - a damaged item: restore_items names the file
        return ocp.args.StandardRestore()
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return ocp.args.StandardRestore(jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta))


def load_arch(directory: str, step: int | None = None) -> dict[str, Any]:
    """Only the `arch` item of a checkpoint (no arrays are read)."""
    return _restore(directory, step, arch=ocp.args.JsonRestore())[1]["arch"]


def _restore(directory: str, step: int | None, **items) -> tuple[int, Any]:
    """`(step, restored items)` at `step` (default: the latest) of an existing directory."""
    _require_dir(directory)
    with manager(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint found")
        return step, restore_items(mngr, step, items)


def _require_dir(directory: str) -> None:
    # Reading must not create the directory (the manager would).
    if not epath.Path(_abs(directory)).is_dir():
        raise FileNotFoundError(f"{directory}: no such checkpoint directory")


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
        arch=ocp.args.JsonSave(to_json(arch)),
        step=ocp.args.JsonSave({"step": int(step)}),
        config=ocp.args.JsonSave(to_json(config_json)),
        metrics=ocp.args.JsonSave(to_json(metrics or {})),
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
        raise InputError(
            f"{mngr.directory}/{step}: checkpoint lacks {missing}; it was written with a "
            "different configuration (train.ema, vae_train.gan_weight?)"
        )
    items = {n: ocp.args.StandardRestore(_wrap(n, abstract_state[n])) for n in names}
    items["step"] = ocp.args.JsonRestore()
    if "data_iter" in have:
        items["data_iter"] = IteratorStateRestore()
    out = restore_items(mngr, step, items)
    state = {n: out[n] for n in names}
    if "rng" in state:
        state["rng"] = state["rng"]["key"]
    try:
        state["step"] = int(out["step"]["step"])
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedCheckpoint(mngr.directory, step, "step", err) from err
    data_state = None
    if "data_iter" in have:
        try:
            data_state = decode_iterator_state(out["data_iter"])
        except (KeyError, TypeError, ValueError) as err:
            raise DamagedCheckpoint(mngr.directory, step, "data_iter", err) from err
    return state, data_state


def restore_newest(mngr: ocp.CheckpointManager, abstract_state: dict[str, Any],
                   fallback: bool = False) -> tuple[int, dict[str, Any], Any] | None:
    """`(step, state, data state)` of the newest step, or None when there is none; a damaged
    step raises DamagedCheckpoint, or with `fallback` is set aside (`damage.newest_readable`)."""
    found = newest_readable(sorted(mngr.all_steps(), reverse=True),
                            lambda step: restore_train_state(mngr, step, abstract_state),
                            fallback)
    if found is None:
        return None
    step, (state, data_state), set_aside = found
    if set_aside:
        mngr.reload()
    return step, state, data_state


# -------------------------------------------------------------------------- inference


class Restored(NamedTuple):
    """What inference reads from a checkpoint step."""

    params: Any  # {"vae": ..., "denoiser": ...}, numpy leaves
    arch: dict[str, Any]
    config: dict[str, Any] | None  # the run's full config, for training checkpoints
    directory: str  # the CheckpointManager directory
    step: int
    ema: bool = False  # params["denoiser"] holds the EMA weights (train.ema)


def find_directory(path: str | os.PathLike) -> str:
    """The CheckpointManager directory named by `path`: a workdir (its `checkpoints/`) or the
    checkpoint directory itself. Raises FileNotFoundError or CheckpointError."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(2, "no such checkpoint or workdir", path)
    if not os.path.isdir(path):
        raise CheckpointError(path, "expected a checkpoint directory or a workdir")
    sub = run_directory(path)
    if os.path.isdir(sub) and step_numbers(sub):
        return sub
    if step_numbers(path):
        return path
    raise CheckpointError(path, "no checkpoint found (neither it nor its checkpoints/ holds a "
                                "step)")


def step_numbers(directory: str) -> list[int]:
    """The finished steps in a CheckpointManager directory, from its file names alone
    (Orbax's temporary step directories carry a suffix)."""
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def restore_inference(path: str | os.PathLike, step: int | None = None,
                      ema: bool = True) -> Restored:
    """The params, arch and run config of a checkpoint or a workdir, as numpy pytrees.

    With `ema` and a checkpoint that holds EMA weights (`train.ema`), `params["denoiser"]` are
    the EMA weights. A damaged checkpoint raises CheckpointError naming the directory, the
    step and Orbax's own error.
    """
    directory = find_directory(path)
    try:
        with manager(directory) as mngr:
            step = mngr.latest_step() if step is None else int(step)
            if step is None:
                raise CheckpointError(directory, "no checkpoint found")
            items = step_items(mngr, step)
            missing = {"params", "arch"} - items
            if missing:
                raise CheckpointError(os.path.join(directory, str(step)),
                                      f"checkpoint lacks item(s) {sorted(missing)}")
            args = dict(params=local_restore(directory, step, "params"),
                        arch=ocp.args.JsonRestore())
            if "config" in items:
                args["config"] = ocp.args.JsonRestore()
            use_ema = ema and "ema" in items
            if use_ema:
                args["ema"] = local_restore(directory, step, "ema")
            out = restore_items(mngr, step, args)
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as err:  # orbax raises many types for damaged checkpoints
        raise CheckpointError(directory, f"not a readable checkpoint ({type(err).__name__}: "
                                         f"{err})") from err
    params = jax.tree.map(np.asarray, out["params"])
    if not isinstance(params, dict) or not {"vae", "denoiser"} <= set(params):
        raise CheckpointError(directory, "checkpoint params lack 'vae' and 'denoiser'")
    if use_ema:
        params = dict(params, denoiser=jax.tree.map(np.asarray, out["ema"]))
    check_finite(params, os.path.join(directory, str(step)))
    stored = out["config"] if "config" in out and out["config"] else None
    return Restored(params, dict(out["arch"]), stored, directory, int(step), use_ema)


def check_finite(params: Any, where: str) -> None:
    """Raise CheckpointError naming the first parameter that holds NaN or Inf."""
    for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.asarray(leaf)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
            raise CheckpointError(where, f"parameter {name} holds {bad} NaN/Inf value(s)")


# ------------------------------------------------------------------ best validation copy
#
# `DIR/best_checkpoint/` keeps one step: `params` (what inference reads), `arch`, and
# `metrics` (the validation metrics plus the step), so it loads like a params checkpoint.


def best_manager(directory: str) -> ocp.CheckpointManager:
    """The manager of a best-validation copy: one step kept."""
    return manager(directory, max_to_keep=1)


def save_best(mngr: ocp.CheckpointManager, step: int, params: Any, arch: dict[str, Any],
              metrics: dict[str, Any]) -> bool:
    """Replace the best copy with `params` at `step` and its validation `metrics`."""
    return mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        arch=ocp.args.JsonSave(to_json(arch)),
        metrics=ocp.args.JsonSave(dict(metrics, step=step)),
    ), force=True)


def best_metrics(mngr: ocp.CheckpointManager | None) -> dict[str, Any]:
    """The metrics stored with the best copy ({} when there is none yet)."""
    if mngr is None or mngr.latest_step() is None:
        return {}
    return mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        metrics=ocp.args.JsonRestore()))["metrics"]


def best_loss(mngr: ocp.CheckpointManager | None) -> float:
    """The validation loss of the best copy; inf when there is none yet."""
    return float(best_metrics(mngr).get("loss", math.inf))
