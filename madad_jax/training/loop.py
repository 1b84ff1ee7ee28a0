"""The resumable training loop shared by the denoiser and the autoencoder.

A task (see `fit`) supplies the jitted, sharded init / step / validation functions; the
loop drives them, logs to TensorBoard, checks every step for NaN/Inf and saves the state
with the data iterator's position, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from madad_jax.core import checkpoint as ckpt
from madad_jax.core import damage, hosts, preempt
from madad_jax.core import mesh as mesh_lib
from madad_jax.core.errors import MadadError, Preempted
from madad_jax.training.logger import Logger

State = dict[str, Any]
Batch = dict[str, Any]
# Validation data: fixed batches, or a function that yields the whole split anew.
ValBatches = list[Batch] | Callable[[], Iterable[Batch]]


class Task(Protocol):
    """What `fit` needs from a model to train: the sharded state and its jitted functions."""

    abstract: Any  # the state's ShapeDtypeStructs, with shardings
    shardings: Any  # the state's NamedShardings

    def init(self) -> State:
        """A fresh sharded state."""

    def step_fn(self, step: int) -> Callable[[State, Batch], tuple[State, dict]]:
        """The jitted `(state, batch) -> (state, metrics)` to run at `step`."""

    def put_batch(self, local: Batch) -> Batch:
        """This process's numpy batch as a global, sharded batch."""

    def validate(self, state: State, batches: list[Batch]) -> dict[str, float]:
        """Mean validation metrics (only called with validation batches)."""

    def best_params(self, state: State) -> Any:
        """The parameters a best-by-validation copy keeps."""

    best_copies: tuple[tuple[str, str], ...]  # (directory under the workdir, metric to minimize)


class ShardedTask:
    """The set-up every task shares: the state's shardings on a mesh, jitted init and steps."""

    best_copies: tuple[tuple[str, str], ...] = (("best_checkpoint", "loss"),)

    def __init__(self, mesh, init_state: Callable[..., State], param_sharding: str,
                 *init_args: Any):
        abstract = jax.eval_shape(init_state, *init_args)
        self.mesh = mesh
        self.shardings = mesh_lib.state_shardings(abstract, mesh, param_sharding)
        self.abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract, self.shardings)
        self.batch_sharding = mesh_lib.batch_sharding(mesh)
        self.replicated = mesh_lib.replicated(mesh)

    def jit_step(self, step: Callable[[State, Batch], tuple[State, dict]]) -> Callable:
        """`step` jitted with the state donated and sharded, the batch split over the mesh
        (with several processes, compiled by all before its first run: `hosts.together`)."""
        return hosts.together(
            jax.jit(step, in_shardings=(self.shardings, self.batch_sharding),
                    out_shardings=(self.shardings, self.replicated), donate_argnums=(0,)),
            "step")

    def put_batch(self, local: Batch) -> Batch:
        return mesh_lib.global_batch(local, self.batch_sharding)

    def validate(self, state: State, batches: list[Batch]) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__} has no validation")

    def best_params(self, state: State) -> Any:
        return state["params"]


def new_state(params: Any, tx, key: jax.Array, **extra: Any) -> State:
    """The state skeleton both tasks use: params, optimizer state, step 0 and the base key."""
    return dict(params=params, opt_state=tx.init(_trained(params)),
                step=jnp.zeros((), jnp.int32), rng=key, **extra)


def _trained(params: Any) -> Any:
    return params["denoiser"] if "denoiser" in params else params["vae"]


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How long and how often: one per trained model (`config.train`, `config.vae_train`)."""

    name: str  # "train" or "vae": the log and progress-bar prefix
    ckpt_dir: str
    num_steps: int
    batch_size: int
    log_every: int
    checkpoint_every: int
    keep: int
    val_every: int = 0  # validate every this many steps (0: at checkpoint saves)
    val_after: int = 0  # > 0: only after this step, at steps = val_after (mod val_every)
    steps_per_epoch: int = 0  # > 0: log the LR and the batch's real samples at each epoch end
    resume_from_damaged: str = "stop"  # or "previous": resume from the newest good step
    profile: tuple[int, ...] = ()  # (first, last): a jax.profiler trace of those steps

    @classmethod
    def of(cls, name: str, ckpt_dir: str, section, num_steps: int | None = None,
           **overrides: int) -> LoopSettings:
        """From a config section holding the usual `*_steps` / `keep_checkpoints` keys."""
        kw = dict(num_steps=int(section.num_steps if num_steps is None else num_steps),
                  batch_size=int(section.batch_size), log_every=int(section.log_every_steps),
                  checkpoint_every=int(section.checkpoint_every_steps),
                  keep=int(section.keep_checkpoints),
                  val_every=int(section.get("val_every_steps", 0)),  # the autoencoder has none
                  resume_from_damaged=str(section.resume_from_damaged),
                  profile=tuple(int(x) for x in (section.get("profile_steps") or ())))
        return cls(name, ckpt_dir, **dict(kw, **overrides))

    def validates_at(self, done: int) -> bool:
        """Whether validation runs after step `done`."""
        every = self.val_every or max(self.checkpoint_every, 1)
        if self.val_after <= 0:
            return done % every == 0 or done == self.num_steps
        return done > self.val_after and done % every == self.val_after % every


class TrainingDiverged(MadadError, RuntimeError):
    """The loss or the gradients became NaN/Inf; nothing after the last good step is saved."""


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
    task: Task,
    workdir: str,
    batches: Iterator[Batch],
    settings: LoopSettings,
    *,
    arch: dict[str, Any],
    config_json: dict[str, Any],
    val_batches: ValBatches | None = None,
    on_step: Callable[[int, State, Logger], None] | None = None,
) -> State:
    """The resumable training loop of the denoiser and the autoencoder: it resumes from the
    newest checkpoint in `settings.ckpt_dir` (data iterator included), checks the metrics for
    NaN/Inf before each save (a bad state is never written), validates on `val_batches` (a
    list, or a function that yields them anew) as `settings.validates_at` says, keeping a best
    copy per `task.best_copies` in `workdir/<name>/`, then calls `on_step(done, state, log)`."""
    s, name, ckpt_dir = settings, settings.name, settings.ckpt_dir
    mngr = ckpt.train_manager(ckpt_dir, s.keep)
    state, latest = _resume(task, mngr, batches, s)
    start = 0 if latest is None else latest
    log = Logger(workdir, start, s.num_steps, s.batch_size, name=name)
    if latest is not None:
        log.message(f"[{name}] resuming from {ckpt_dir} at step {latest}")
    copies = _best_copies(task, workdir) if val_batches else {}
    best = {d: float(ckpt.best_metrics(m).get(metric, math.inf))
            for d, (metric, m) in copies.items()}
    log_every, checkpoint_every = max(s.log_every, 1), max(s.checkpoint_every, 1)
    last_good = latest
    pending: list[tuple[int, dict]] = []
    logged: dict[str, float] = {}
    tracing = False
    if start < s.num_steps:  # the first step waits for XLA (tens of seconds on a CPU)
        log.status(f"compiling the {name} step")
    try:
        with preempt.watch() as stop:
            for step in range(start, s.num_steps):
                tracing = _profile(s.profile, step, workdir, tracing, state)
                local = next(batches)
                state, metrics = task.step_fn(step)(state, task.put_batch(local))
                done = step + 1
                pending.append((done, metrics))
                stopping = stop.reached(done, mngr)
                save = done % checkpoint_every == 0 or done == s.num_steps or stopping
                if s.steps_per_epoch and done % s.steps_per_epoch == 0:
                    log.scalars(done, _epoch_row(metrics, done // s.steps_per_epoch),
                                prefix=f"{name}_epoch")
                if done % log_every == 0 or save:
                    rows = _host_metrics(pending)
                    pending = []
                    _check_finite(rows, last_good, ckpt_dir)
                    logged = _mean_rows(rows)
                    log.scalars(done, logged)
                if save:
                    t0 = time.perf_counter()
                    data_state = batches.get_state() if hasattr(batches, "get_state") else None
                    ckpt.save_train_state(mngr, done, state, arch, config_json, data_state,
                                          logged)
                    last_good = done
                if stopping:  # before validating: the notice leaves little time
                    _stop_preempted(mngr, done, ckpt_dir, t0)
                if copies and s.validates_at(done):
                    _validate(task, state, done, val_batches, copies, best, arch, log, workdir)
                (on_step or _no_hook)(done, state, log)  # train.eval_every_steps
                log.step(done)
        if tracing:
            _profile(s.profile, s.profile[1] + 1, workdir, tracing, state)
        if start >= s.num_steps:
            log.message(f"[{name}] {ckpt_dir} already holds step {start} >= {s.num_steps} steps")
        for m in [mngr, *(m for _, m in copies.values())]:
            m.wait_until_finished()
            m.close()
        log.close()
    except BaseException as err:
        _after_error(err, tracing, [mngr, *(m for _, m in copies.values()), log], ckpt_dir)
        raise
    return state


def _stop_preempted(mngr, done: int, ckpt_dir: str, t0: float) -> None:
    """Finish the save of step `done` (begun at `t0`) and raise `Preempted`."""
    mngr.wait_until_finished()
    raise Preempted(
        f"stopped by SIGTERM after step {done}: saved it to {ckpt_dir} "
        f"in {time.perf_counter() - t0:.1f} s; run the same command again to resume")


def _after_error(err: BaseException, tracing: bool, closables: list, ckpt_dir: str) -> None:
    """Close what `fit` opened after `err`; a full disk or a read-only file system found
    inside Orbax's error is raised as the OSError itself (one line)."""
    if tracing:
        with contextlib.suppress(Exception):
            jax.profiler.stop_trace()
    # One error is reported; the managers' own failures while closing would bury it.
    for m in closables:
        _close_quietly(m)
    if isinstance(err, Exception) and not getattr(err, "filename", None):
        os_err = damage.os_error_of(err, ckpt_dir)
        if os_err is not None:
            raise os_err from err


def _no_hook(done: int, state: State, log: Logger) -> None:
    """No per-step hook (`fit`'s `on_step`)."""


def _profile(steps: tuple[int, ...], step: int, workdir: str, tracing: bool,
             state: Any) -> bool:
    """Start a jax.profiler trace (into `DIR/tb/profile`, which TensorBoard's profiler
    opens) before step `steps[0]`, stop it once step `steps[1]` ran; whether it runs."""
    if len(steps) != 2:
        return False
    if not tracing and step == steps[0] and jax.process_index() == 0:
        jax.profiler.start_trace(os.path.join(workdir, "tb", "profile"))
        return True
    if tracing and step > steps[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        return False
    return tracing


def _resume(task: Task, mngr, batches: Iterator[Batch],
            s: LoopSettings) -> tuple[State, int | None]:
    """`(state, step)` of the newest checkpoint, the data iterator set to its position; a
    fresh state and None when there is none."""
    try:
        found = ckpt.restore_newest(mngr, task.abstract, s.resume_from_damaged == "previous")
    except BaseException:
        _close_quietly(mngr)
        raise
    if found is None:
        return task.init(), None
    latest, state, data_state = found
    state["step"] = jax.device_put(jnp.asarray(state["step"], jnp.int32),
                                   task.shardings["step"])
    if data_state is not None and hasattr(batches, "set_state"):
        batches.set_state(data_state)
    return state, latest


def _best_copies(task: Task, workdir: str) -> dict[str, tuple[str, Any]]:
    """`{directory: (metric, manager)}`: one best-validation copy per `task.best_copies`."""
    return {d: (metric, ckpt.best_manager(os.path.join(workdir, d)))
            for d, metric in task.best_copies}


def _validate(task: Task, state: State, done: int, val_batches: ValBatches,
              copies: dict[str, tuple[str, Any]], best: dict[str, float],
              arch: dict[str, Any], log: Logger, workdir: str) -> None:
    """Validate after step `done`; replace each best copy whose metric improved."""
    name = log.name
    vm = task.validate(state, val_batches() if callable(val_batches) else val_batches)
    log.scalars(done, vm, prefix=f"{name}_val")
    for d, (metric, m) in copies.items():
        if vm[metric] < best[d]:
            best[d] = vm[metric]
            ckpt.save_best(m, done, task.best_params(state), arch, vm)
            log.message(f"[{name}] step {done}: best {metric} "
                        f"{vm[metric]:.5g} -> {os.path.join(workdir, d)}")


def _close_quietly(closable) -> None:
    """Finish and close a checkpoint manager (or logger) after an error, ignoring its own
    errors; Orbax leaves a failed save's temporary directory behind, so remove those."""
    if isinstance(closable, Logger):
        closable.close()
        return
    with damage.quiet_stderr():  # Orbax's threads would print the reported failure again
        for fn in ("wait_until_finished", "close"):
            try:
                getattr(closable, fn, lambda: None)()
            except Exception:  # noqa: BLE001, S110 - the first error is the one reported
                pass
        damage.settle(0.2)
    directory = getattr(closable, "directory", None)
    if directory is not None:
        damage.remove_tmp_dirs(str(directory))


def _epoch_row(metrics: dict[str, jax.Array], epoch: int) -> dict[str, float]:
    """The LR in force during the epoch that just ended, and its last batch's real samples."""
    got = jax.device_get({k: metrics[k] for k in ("lr", "real_samples") if k in metrics})
    return dict({k: float(v) for k, v in got.items()}, epoch=float(epoch))


def config_json(config) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())
