"""Training the denoiser of MAD-AD on a device mesh, with exact resume.

The training state is one pytree:

    {"params": {"vae": frozen, "denoiser": trained}, "opt_state": ..., "ema": ... (optional),
     "step": int32, "rng": base key}

`train_step(state, batch) -> (state, metrics)` is pure and runs under `jax.jit` with the
state donated. Step `s` draws all its randomness from `fold_in(rng, s)`, and the data
iterator's position is checkpointed with the state, so a run resumed from any checkpoint
repeats the uninterrupted run bit for bit (on CPU).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath

from madad_jax import checkpoint as ckpt
from madad_jax import diffusion, latents
from madad_jax import mesh as mesh_lib
from madad_jax.latents import LatentNorm
from madad_jax.models import build_denoiser, build_vae, sample_posterior

State = dict[str, Any]
Batch = dict[str, Any]

# Keys a batch may carry instead of images: the VAE posterior moments from a latent cache.
LATENT_MEAN, LATENT_LOGVAR = "latent_mean", "latent_logvar"


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/Inf; nothing after the last good step is saved."""


# ---------------------------------------------------------------------------- optimizer


def lr_schedule(tcfg) -> optax.Schedule:
    """Linear warm-up to `lr` over `warmup_steps`, then cosine decay to 0 (or constant).

    The warm-up starts at lr / warmup_steps, not 0, so the first step already learns.
    """
    lr, total = float(tcfg.lr), max(int(tcfg.num_steps), 1)
    warmup = min(max(int(tcfg.warmup_steps), 0), total)
    kind = tcfg.schedule
    if kind not in ("cosine", "constant"):
        raise ValueError(f"train.schedule must be 'cosine' or 'constant', not {kind!r}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1.0) / warmup) if warmup > 0 else 1.0
        if kind == "constant":
            return lr * ramp
        frac = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
        return lr * ramp * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return schedule


def make_optimizer(tcfg) -> optax.GradientTransformation:
    """AdamW (torch's defaults: betas 0.9/0.999, eps 1e-8) with optional global-norm clipping."""
    parts = []
    if float(tcfg.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(tcfg.grad_clip)))
    parts.append(
        optax.adamw(lr_schedule(tcfg), b1=0.9, b2=0.999, eps=1e-8,
                    weight_decay=float(tcfg.weight_decay))
    )
    return optax.chain(*parts)


# ------------------------------------------------------------------------------- models


def denoiser_apply(model) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """`apply_fn(params, z_t, t, train, rngs)` in the form `diffusion.loss_fn` expects."""

    def apply_fn(params, z_t, t, train, rngs):
        return model.apply({"params": params}, z_t, t, train, rngs=rngs)

    return apply_fn


def latent_shape(config) -> tuple[int, int, int]:
    """(h, w, c) of a latent for `config.image_size`."""
    vae = build_vae(config)
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, vae.in_channels),
                             jnp.float32)
    abstract = jax.eval_shape(lambda x: vae.init(jax.random.key(0), x, method=vae.encode), x)
    mean, _ = jax.eval_shape(
        lambda p, x: vae.apply(p, x, method=vae.encode), abstract, x
    )
    return tuple(mean.shape[1:])


def init_vae_params(config, key: jax.Array) -> Any:
    """Freshly initialized autoencoder parameters (encoder and decoder)."""
    vae = build_vae(config)
    x = jnp.zeros((1, config.image_size, config.image_size, vae.in_channels), jnp.float32)
    return jax.jit(lambda k: vae.init(k, x)["params"])(key)


def init_denoiser_params(config, key: jax.Array) -> Any:
    model = build_denoiser(config)
    h, w, c = latent_shape(config)
    z = jnp.zeros((1, h, w, c), jnp.float32)
    return model.init(key, z, jnp.zeros((1,), jnp.int32), False)["params"]


def init_state(config, vae_params: Any, tx: optax.GradientTransformation) -> State:
    """A fresh training state (pure: jit it with `out_shardings` to build it sharded)."""
    key = jax.random.PRNGKey(int(config.train.seed))
    den = init_denoiser_params(config, jax.random.fold_in(key, 1))
    state = dict(
        params={"vae": vae_params, "denoiser": den},
        opt_state=tx.init(den),
        step=jnp.zeros((), jnp.int32),
        rng=key,
    )
    if config.train.ema:
        state["ema"] = jax.tree.map(jnp.copy, den)
    return state


# --------------------------------------------------------------------------- train step


def batch_latents(vae, vae_params, batch: Batch, key: jax.Array, norm: LatentNorm) -> jax.Array:
    """z0 = the normalized VAE posterior sample, from images or cached posterior moments."""
    if LATENT_MEAN in batch:
        mean, logvar = batch[LATENT_MEAN], batch[LATENT_LOGVAR]
    else:
        mean, logvar = vae.apply({"params": vae_params}, batch["image"], method=vae.encode)
    z = sample_posterior(key, mean.astype(jnp.float32), logvar.astype(jnp.float32))
    return jax.lax.stop_gradient(norm.to_model(z))


def _mask2d(mask: jax.Array | None) -> jax.Array | None:
    """(B,H,W,1) or (B,H,W) brain masks as (B,H,W)."""
    return mask[..., 0] if mask is not None and mask.ndim == 4 else mask


def make_train_step(config, tx: optax.GradientTransformation) -> Callable:
    """The pure `train_step(state, batch) -> (state, metrics)`."""
    vae = build_vae(config, dtype=config.model.dtype)
    apply_fn = denoiser_apply(build_denoiser(config))
    schedule = lr_schedule(config.train)
    norm = LatentNorm.from_config(config)
    ema_decay = float(config.train.ema_decay)

    def train_step(state: State, batch: Batch) -> tuple[State, dict[str, jax.Array]]:
        step = state["step"]
        k_post, k_loss = jax.random.split(jax.random.fold_in(state["rng"], step))
        z0 = batch_latents(vae, state["params"]["vae"], batch, k_post, norm)
        brainmask = _mask2d(batch.get("brainmask"))

        def loss(den):
            return diffusion.loss_fn(apply_fn, den, z0, brainmask, k_loss, config, train=True)

        den = state["params"]["denoiser"]
        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(den)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], den)
        den = optax.apply_updates(den, updates)
        new = dict(state, params=dict(state["params"], denoiser=den), opt_state=opt_state,
                   step=step + 1)
        if "ema" in state:
            new["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p,
                                      state["ema"], den)
        metrics = dict(aux, grad_norm=grad_norm, lr=schedule(step),
                       finite=jnp.isfinite(aux["loss"]) & jnp.isfinite(grad_norm))
        return new, metrics

    return train_step


def make_eval_step(config) -> Callable:
    """`eval_step(params, batch, key) -> metrics`: the loss without dropout (validation)."""
    vae = build_vae(config, dtype=config.model.dtype)
    apply_fn = denoiser_apply(build_denoiser(config))
    norm = LatentNorm.from_config(config)

    def eval_step(params, batch, key):
        k_post, k_loss = jax.random.split(key)
        z0 = batch_latents(vae, params["vae"], batch, k_post, norm)
        mask = _mask2d(batch.get("brainmask"))
        _, aux = diffusion.loss_fn(apply_fn, params["denoiser"], z0, mask, k_loss, config,
                                   train=False)
        return aux

    return eval_step


class DenoiserTask:
    """The jitted, sharded init / train / eval functions of the denoiser for one mesh."""

    def __init__(self, config, mesh, vae_abstract: Any, vae_params: Any | None = None):
        self.config, self.mesh = config, mesh
        self.vae_params = vae_params
        self.tx = make_optimizer(config.train)
        abstract = jax.eval_shape(lambda v: init_state(config, v, self.tx), vae_abstract)
        self.shardings = mesh_lib.state_shardings(abstract, mesh, config.mesh.param_sharding)
        self.abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract, self.shardings)
        self.batch_sharding = mesh_lib.batch_sharding(mesh)
        repl = mesh_lib.replicated(mesh)
        self._vae_sharding = self.shardings["params"]["vae"]
        self._init = jax.jit(lambda v: init_state(config, v, self.tx),
                             in_shardings=(self._vae_sharding,), out_shardings=self.shardings)
        self.step = jax.jit(make_train_step(config, self.tx),
                            in_shardings=(self.shardings, self.batch_sharding),
                            out_shardings=(self.shardings, repl), donate_argnums=(0,))
        self.eval = jax.jit(make_eval_step(config),
                            in_shardings=(self.shardings["params"], self.batch_sharding, repl),
                            out_shardings=repl)

    def init(self, vae_params: Any | None = None) -> State:
        """A fresh sharded state around the given (frozen) VAE parameters."""
        vae_params = self.vae_params if vae_params is None else vae_params
        if vae_params is None:
            raise ValueError("no autoencoder to train the denoiser with: set "
                             "vae_train.enabled, vae_train.checkpoint or checkpoint")
        vae_params = jax.tree.map(
            lambda x: x if isinstance(x, jax.Array) else np.asarray(x, np.float32), vae_params)
        return self._init(jax.device_put(vae_params, self._vae_sharding))

    def step_fn(self, step: int) -> Callable:
        return self.step

    def put_batch(self, local: Batch) -> Batch:
        return mesh_lib.global_batch(local, self.batch_sharding)

    def validate(self, state: State, batches: list[Batch]) -> dict[str, float]:
        """Mean loss terms over fixed batches with fixed keys (comparable across steps)."""
        key = jax.random.PRNGKey(int(self.config.train.seed) + 1_000_003)
        rows = [self.eval(state["params"], self.put_batch(b), jax.random.fold_in(key, i))
                for i, b in enumerate(batches)]
        rows = jax.device_get(rows)
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}

    def best_params(self, state: State) -> Any:
        return state["params"]


# ------------------------------------------------------------------------------- logging


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


# ----------------------------------------------------------------------------- the loop


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
        best = ckpt.manager(os.path.join(workdir, "best_checkpoint"), max_to_keep=1)
    log_every, checkpoint_every = max(int(log_every), 1), max(int(checkpoint_every), 1)
    val_every = int(val_every) or checkpoint_every
    best_loss = _best_so_far(best)
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
                    best.save(done, args=_best_args(task.best_params(state), arch, done, vm),
                              force=True)
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


def _best_so_far(best) -> float:
    if best is None or best.latest_step() is None:
        return math.inf
    meta = best.restore(best.latest_step(), args=ocp.args.Composite(
        metrics=ocp.args.JsonRestore()))["metrics"]
    return float(meta.get("loss", math.inf))


def _best_args(params, arch, step, metrics):
    return ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        arch=ocp.args.JsonSave(ckpt._jsonable(arch)),
        metrics=ocp.args.JsonSave(dict(metrics, step=step)),
    )


def config_json(config) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def train_loop(
    config,
    workdir: str,
    batches: Iterator[Batch],
    vae_params: Any | None,
    val_batches: list[Batch] | None = None,
    mesh=None,
) -> State:
    """Train the denoiser to `train.num_steps`, resuming from `DIR/checkpoints/` if present.

    `batches` yields this process's share of each global batch (numpy dicts) and has
    `get_state()` / `set_state()` (a grain iterator). `vae_params` are used only when no
    checkpoint exists yet (a resumed run takes the VAE stored in its checkpoint).
    """
    tcfg = config.train
    mesh = mesh_lib.make_mesh(config) if mesh is None else mesh
    check_batch_size(int(tcfg.batch_size), mesh)
    vae_abstract = jax.eval_shape(lambda: init_vae_params(config, jax.random.PRNGKey(0)))
    task = DenoiserTask(config, mesh, vae_abstract, vae_params)
    return fit(
        task, workdir, os.path.join(workdir, "checkpoints"), batches,
        num_steps=int(tcfg.num_steps), batch_size=int(tcfg.batch_size),
        log_every=int(tcfg.log_every_steps), checkpoint_every=int(tcfg.checkpoint_every_steps),
        keep=int(tcfg.keep_checkpoints), arch=ckpt.arch_from_config(config),
        config_json=config_json(config), name="train", val_batches=val_batches,
        val_every=int(tcfg.get("val_every_steps", 0)),
    )


def check_batch_size(batch_size: int, mesh) -> None:
    nproc = jax.process_count()
    if batch_size % nproc or batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} must be divisible by the {nproc} processes "
                         f"and the {mesh.size} devices of the mesh")


# --------------------------------------------------------------------------- data + run


def _data_config(config, **train_overrides):
    """A copy of `config` whose `train.*` keys are overridden (for the pipeline helpers)."""
    cfg = config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.train.update(train_overrides)
    return cfg


def demo_shards(config, workdir: str) -> str:
    """The demo's healthy training slices as an ArrayRecord shard in `DIR/data/demo/`.

    They are generated once (deterministically from `data.demo`) and reused on resume; a
    changed demo config regenerates them.
    """
    from madad_jax.data import records, synthetic

    out = os.path.join(workdir, "data", "demo")
    shard = os.path.join(out, records.shard_name("train", 0, 1))
    stamp_path = os.path.join(out, "settings.json")
    stamp = {"image_size": int(config.image_size),
             "demo": json.loads(config.data.demo.to_json_best_effort())}
    if os.path.isfile(shard) and os.path.isfile(stamp_path):
        if records.read_json(stamp_path) == stamp:
            return shard
    os.makedirs(out, exist_ok=True)
    if jax.process_index() == 0:
        train = synthetic.from_config(config, splits=("train",))["train"]
        rows = (
            {"image": img[..., 0], "brainmask": (mask > 0).astype(np.uint8), "name": name}
            for img, mask, name in zip(train["images"], train["brainmasks"], train["names"],
                                       strict=True)
        )
        records.write_shard(shard, rows)
        records.write_json_atomic(stamp_path, stamp)
    _sync("demo_shards")
    return shard


def png_shards(config, workdir: str) -> str:
    """The reference's PNG `train/` split converted (once, resumably) into `DIR/data/png/`."""
    from madad_jax.data import convert

    out = os.path.join(workdir, "data", "png")
    if jax.process_index() == 0:
        convert.convert_png(config.data.png_root, out, modality=config.data.modality,
                            image_size=int(config.image_size), splits=("train",),
                            bad_input=config.data.get("bad_input", "skip"), progress=False)
    _sync("png_shards")
    return os.path.join(out, "train.manifest.json")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def training_source(config, workdir: str) -> str:
    """Where the training slices are: a shard set path, by `config.data.kind`."""
    kind = config.data.kind
    if kind == "arrayrecord":
        if not config.data.train_path:
            raise ValueError("config.data.train_path is empty (an ArrayRecord shard set from "
                             "python -m madad_jax.data.convert)")
        return config.data.train_path
    if kind == "demo":
        return demo_shards(config, workdir)
    if kind == "png":
        if not config.data.png_root:
            raise ValueError("config.data.png_root is empty")
        return png_shards(config, workdir)
    raise ValueError(f"config.data.kind must be arrayrecord | demo | png, not {kind!r}")


def train_batches(config, workdir: str, batch_size: int, latents: bool = True):
    """This process's share of each global training batch, from the grain pipeline."""
    from madad_jax.data import pipeline

    cfg = _data_config(config, batch_size=int(batch_size))
    # With a latent cache the pipeline reads posterior moments instead of images.
    if not (latents and cfg.data.get("latent_cache", "")):
        with cfg.unlocked():
            cfg.data.latent_cache = ""
            cfg.data.train_path = training_source(config, workdir)
    return pipeline.train_iterator(cfg)


def validation_batches(config) -> list[Batch] | None:
    """`train.val_batches` fixed batches of `data.val_path` (None without one)."""
    if not config.data.get("val_path", "") or int(config.train.get("val_batches", 0)) <= 0:
        return None
    from madad_jax.data import pipeline

    pc, pi = jax.process_count(), jax.process_index()
    ds = pipeline.make_dataset(
        config.data.val_path, int(config.train.batch_size) // pc, split="val", augment=False,
        shuffle=False, repeat=True, process_index=pi, process_count=pc,
    )
    it = iter(ds)
    return [next(it) for _ in range(int(config.train.val_batches))]


def load_vae(config, directory: str) -> Any:
    """The `params["vae"]` of any checkpoint, with `config.vae` set from its `arch`."""
    params, arch = ckpt.load_params(directory)
    if "vae" not in params:
        raise ValueError(f"{directory}: checkpoint holds no 'vae' parameters")
    if isinstance(arch, dict) and isinstance(arch.get("vae"), dict):
        with config.unlocked():
            config.vae.update(ckpt._tuplify(arch["vae"]))
    want = jax.eval_shape(lambda: init_vae_params(config, jax.random.PRNGKey(0)))
    got = jax.tree.map(lambda x: tuple(np.shape(x)), params["vae"])
    if jax.tree.map(lambda x: tuple(x.shape), want) != got:
        raise ValueError(f"{directory}: its VAE parameters do not match config.vae")
    return params["vae"]


def resolve_vae(config, workdir: str) -> Any:
    """The frozen VAE for a new run: loaded (`vae_train.checkpoint`) or trained first."""
    vcfg = config.vae_train
    if vcfg.checkpoint:
        return load_vae(config, vcfg.checkpoint)
    if vcfg.enabled:
        from madad_jax import train_vae

        if config.data.get("latent_cache", ""):
            raise ValueError("data.latent_cache holds moments of another VAE; it cannot be "
                             "used while vae_train.enabled trains a new one")
        batches = train_batches(config, workdir, int(vcfg.batch_size), latents=False)
        return train_vae.train_loop(config, workdir, batches)
    raise ValueError("no autoencoder: set vae_train.checkpoint=CKPT_DIR (for example the "
                     "reference's imported VAE) or vae_train.enabled=True")


def _params_fingerprint(params: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def cache_run_latents(config, workdir: str, vae_params: Any | None) -> None:
    """`data.cache_latents`: encode the training slices once into `{workdir}/latent_cache`.

    The cache is named by a fingerprint of the VAE's parameters, so another VAE rebuilds it.
    A resumed run (`vae_params` None) reuses the cache its first run completed.
    """
    from madad_jax.data import latent_cache

    out = os.path.join(workdir, "latent_cache")
    if vae_params is not None:
        if jax.process_index() == 0:
            encode = latent_cache.vae_encoder(config, vae_params)
            latent_cache.build_latent_cache(
                training_source(config, workdir), out, encode,
                encoder_id=f"vae-{_params_fingerprint(vae_params)}")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("latent_cache")
    elif not epath.Path(out).exists():
        raise ValueError(f"{out}: data.cache_latents is set but the resumed run has no cache")
    with config.unlocked():
        config.data.latent_cache = out
    from_data = _latent_norm_from_data(config)
    if from_data and vae_params is not None:
        stats = latents.stats_from_cache(out, float(config.diffusion.brain_threshold))
        with config.unlocked():
            if config.get("latent_scale_from_data", False):
                config.latent_scale = 1.0 / stats["std"]
            if config.get("latent_whiten_from_data", False):
                config.latent_whitening.update(latents.zca(stats["mean"], stats["cov"]))
    if jax.process_index() == 0 and config.get("latent_scale_from_data", False):
        print(f"latent_scale={config.latent_scale:.5g} (1 / std of the cached posterior means)",
              file=sys.stderr)
    if jax.process_index() == 0 and config.get("latent_whiten_from_data", False):
        print(f"latent whitening from the cached in-brain posterior means: "
              f"shift {np.round(config.latent_whitening.shift, 3).tolist()}", file=sys.stderr)


def adopt_derived_latent_norm(config, arch: dict[str, Any]) -> None:
    """On resume: take the latent scale / whitening the first run derived from its cache."""
    with config.unlocked():
        if config.get("latent_scale_from_data", False) and "latent_scale" in arch:
            config.latent_scale = float(arch["latent_scale"])
        if config.get("latent_whiten_from_data", False) and "latent_whitening" in arch:
            config.latent_whitening.update(ckpt._tuplify(arch["latent_whitening"]))


def _latent_norm_from_data(config) -> bool:
    return bool(config.get("latent_scale_from_data", False)
                or config.get("latent_whiten_from_data", False))


def apply_epochs(config, workdir: str) -> None:
    """With `train.num_epochs > 0`, set `num_steps` / `warmup_steps` from the data set size."""
    epochs = float(config.train.get("num_epochs", 0.0))
    if epochs <= 0:
        return
    from madad_jax.data import pipeline

    path = config.data.get("latent_cache", "") or training_source(config, workdir)
    source, _ = pipeline.open_source(path, "train")
    per_epoch = math.ceil(len(source) / int(config.train.batch_size))
    with config.unlocked():
        config.train.num_steps = max(1, round(epochs * per_epoch))
        config.train.warmup_steps = round(float(config.train.warmup_epochs) * per_epoch)
    if jax.process_index() == 0:
        print(f"{len(source)} training slices, {per_epoch} steps per epoch: "
              f"train.num_steps={config.train.num_steps}, "
              f"train.warmup_steps={config.train.warmup_steps}", file=sys.stderr)


def run(config, workdir: str) -> State:
    """`mode=train`: (train the VAE if asked, then) train the denoiser; resumes in `workdir`.

    `workdir` may be a local path or a bucket URL (gs://...) that every host sees.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if config.get("checkpoint", "") and jax.process_index() == 0:
        print(f"note: training ignores checkpoint={config.checkpoint} (evaluation reads it); "
              "vae_train.checkpoint sets the autoencoder", file=sys.stderr)
    if _latent_norm_from_data(config) and not config.data.get("cache_latents", False):
        raise ValueError("latent_scale_from_data / latent_whiten_from_data derive the latent "
                         "normalization from the latent cache: set data.cache_latents=True")
    apply_epochs(config, workdir)
    resuming = ckpt.latest_step(os.path.join(workdir, "checkpoints")) is not None
    if resuming:
        arch = ckpt.load_arch(os.path.join(workdir, "checkpoints"))
        with config.unlocked():
            config.vae.update(ckpt._tuplify(arch["vae"]))
        adopt_derived_latent_norm(config, arch)
    vae_params = None if resuming else resolve_vae(config, workdir)
    if config.data.get("cache_latents", False):
        cache_run_latents(config, workdir, vae_params)
    batches = train_batches(config, workdir, int(config.train.batch_size))
    return train_loop(config, workdir, batches, vae_params, validation_batches(config))
