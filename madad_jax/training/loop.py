"""The resumable training loop shared by the denoiser and the autoencoder.

A task (see `fit`) supplies the jitted, sharded init / step / validation functions; the
loop drives them, logs to TensorBoard, checks every step for NaN/Inf and saves the state
with the data iterator's position, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from madad_jax.core import checkpoint as ckpt

State = dict[str, Any]


Batch = dict[str, Any]


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/Inf; nothing after the last good step is saved."""


class Logger:
    """TensorBoard scalars in `DIR/tb/` plus a tqdm progress line (process 0 only)."""

    def __init__(self, workdir: str, start: int, total: int, batch_size: int,
                 name: str = "train"):
        self.name = name
        self.active = jax.process_index() == 0
        self.batch_size = batch_size
        self.writer = None
        self.bar = None
        if not self.active:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        self.writer = SummaryWriter(os.path.join(workdir, "tb"))
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                        file=sys.stderr, mininterval=1.0, smoothing=0.1, desc=name)
        self._last_time, self._last_step = time.perf_counter(), start

    def step(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def scalars(self, step: int, values: dict[str, float], prefix: str | None = None) -> None:
        if not self.active:
            return
        prefix = prefix or self.name
        now = time.perf_counter()
        if prefix == self.name and step > self._last_step:
            values = dict(values, slices_per_s=(step - self._last_step) * self.batch_size
                          / max(now - self._last_time, 1e-9))
            self._last_time, self._last_step = now, step
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)
        self.writer.flush()
        self.bar.set_postfix_str(f"loss {values.get('loss', float('nan')):.4g}", refresh=False)
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        self.bar.write(f"[{prefix}] step {step}: {shown}", file=sys.stderr)

    def message(self, text: str) -> None:
        if self.active:
            (self.bar.write if self.bar is not None else print)(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _host_metrics(pending: list[tuple[int, dict[str, jax.Array]]]) -> list[tuple[int, dict]]:
    got = jax.device_get([m for _, m in pending])
    steps = [s for s, _ in pending]
    return [(s, {k: float(v) for k, v in m.items()}) for s, m in zip(steps, got, strict=True)]


def _check_finite(rows: list[tuple[int, dict]], last_good: int | None, ckpt_dir: str) -> None:
    for s, m in rows:
        if not m["finite"]:
            where = (f"the last good checkpoint is step {last_good} in {ckpt_dir}"
                     if last_good is not None else "no checkpoint was written")
            raise TrainingDiverged(
                f"non-finite training values at step {s} (loss {m['loss']}, grad norm "
                f"{m['grad_norm']}); stopped without saving, {where}. Lower the learning "
                "rate, set a gradient clip, or check the data for NaN/Inf."
            )


def _mean_rows(rows: list[tuple[int, dict]]) -> dict[str, float]:
    keys = [k for k in rows[-1][1] if k != "finite"]
    out = {k: float(np.mean([m[k] for _, m in rows])) for k in keys}
    if "lr" in out:
        out["lr"] = rows[-1][1]["lr"]
    return out


def fit(
    task,
    workdir: str,
    ckpt_dir: str,
    batches: Iterator[Batch],
    *,
    num_steps: int,
    batch_size: int,
    log_every: int,
    checkpoint_every: int,
    keep: int,
    arch: dict[str, Any],
    config_json: dict[str, Any],
    name: str = "train",
    val_batches: list[Batch] | None = None,
    val_every: int = 0,
) -> State:
    """The resumable training loop shared by the denoiser and the autoencoder.

    `task` provides `abstract` / `shardings` (the state), `init()`, `step_fn(step)` (the
    jitted step to run at `step`), `put_batch(local)` and, for validation,
    `validate(state, batches)` and `best_params(state)`. The loop resumes from the newest
    checkpoint in `ckpt_dir`, restoring the data iterator too; it checks every step's
    metrics for NaN/Inf before each save, so a bad state is never written.
    """
    mngr = ckpt.train_manager(ckpt_dir, keep)
    best = None
    latest = mngr.latest_step()
    if latest is not None:
        state, data_state = ckpt.restore_train_state(mngr, latest, task.abstract)
        state["step"] = jax.device_put(jnp.asarray(state["step"], jnp.int32),
                                       task.shardings["step"])
        if data_state is not None and hasattr(batches, "set_state"):
            batches.set_state(data_state)
        start = latest
    else:
        state = task.init()
        start = 0
    log = Logger(workdir, start, num_steps, batch_size, name=name)
    if latest is not None:
        log.message(f"[{name}] resuming from {ckpt_dir} at step {latest}")
    if val_batches:
        best = ckpt.best_manager(os.path.join(workdir, "best_checkpoint"))
    log_every, checkpoint_every = max(int(log_every), 1), max(int(checkpoint_every), 1)
    val_every = int(val_every) or checkpoint_every
    best_loss = ckpt.best_loss(best)
    last_good = latest
    pending: list[tuple[int, dict]] = []
    logged: dict[str, float] = {}
    try:
        for step in range(start, num_steps):
            local = next(batches)
            state, metrics = task.step_fn(step)(state, task.put_batch(local))
            done = step + 1
            pending.append((done, metrics))
            save = done % checkpoint_every == 0 or done == num_steps
            if done % log_every == 0 or save:
                rows = _host_metrics(pending)
                pending = []
                _check_finite(rows, last_good, ckpt_dir)
                logged = _mean_rows(rows)
                log.scalars(done, logged)
            if save:
                data_state = batches.get_state() if hasattr(batches, "get_state") else None
                ckpt.save_train_state(mngr, done, state, arch, config_json, data_state,
                                      logged)
                last_good = done
            if best is not None and (done % val_every == 0 or done == num_steps):
                vm = task.validate(state, val_batches)
                log.scalars(done, vm, prefix=f"{name}_val")
                if vm["loss"] < best_loss:
                    best_loss = vm["loss"]
                    ckpt.save_best(best, done, task.best_params(state), arch, vm)
            log.step(done)
        if start >= num_steps:
            log.message(f"[{name}] {ckpt_dir} already holds step {start} >= {num_steps} steps")
    finally:
        mngr.wait_until_finished()
        mngr.close()
        if best is not None:
            best.wait_until_finished()
            best.close()
        log.close()
    return state


def config_json(config) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def check_batch_size(batch_size: int, mesh) -> None:
    nproc = jax.process_count()
    if batch_size % nproc or batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} must be divisible by the {nproc} processes "
                         f"and the {mesh.size} devices of the mesh")
