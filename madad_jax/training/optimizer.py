"""The denoiser's optimizer: AdamW with a warm-up + cosine learning-rate schedule.

Two schedules, chosen by `train.lr_schedule`:
- "per_step": linear warm-up over `warmup_steps`, then a cosine to 0 at `num_steps`
  (or constant, `train.schedule`), evaluated at every step;
- "reference": the authors' schedule, a warm-up + cosine evaluated once per epoch (the LR is
  constant within an epoch, epoch 0 runs at LR 0) whose cosine ends at 1.2 x the epochs.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

from madad_jax.core.errors import InputError

LR_SCHEDULES = ("per_step", "reference")
REFERENCE_HORIZON = 1.2  # the reference's num_training_steps = epochs * 1.2


def reference_epoch_lr(epoch: int, lr: float, warmup_epochs: int, num_epochs: int) -> float:
    """The LR in force during `epoch` under the reference's per-epoch schedule.

    The reference steps a warm-up + half-cosine multiplier once per epoch, with
    `num_warmup_steps = warmup_epochs` and `num_training_steps = num_epochs * 1.2`: a linear
    ramp from 0, then 0.5 * (1 + cos(pi * progress)) floored at 0.
    """
    horizon = num_epochs * REFERENCE_HORIZON
    if epoch < warmup_epochs:
        factor = float(epoch) / float(max(1, warmup_epochs))
    else:
        progress = float(epoch - warmup_epochs) / float(max(1, horizon - warmup_epochs))
        factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return lr * factor


def reference_lr_schedule(lr: float, warmup_epochs: int, num_epochs: int,
                          steps_per_epoch: int) -> optax.Schedule:
    """`reference_epoch_lr` at `epoch = step // steps_per_epoch` (past the end: the last epoch)."""
    if steps_per_epoch < 1:
        raise InputError(f"steps_per_epoch must be >= 1, not {steps_per_epoch}")
    n = max(int(num_epochs), 1)
    table = jnp.asarray(
        np.array([reference_epoch_lr(e, lr, warmup_epochs, num_epochs) for e in range(n)]),
        jnp.float32)

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        return table[jnp.clip(epoch, 0, n - 1)]

    return schedule


def _per_step_schedule(tcfg) -> optax.Schedule:
    """Linear warm-up to `lr` over `warmup_steps`, then cosine decay to 0 (or constant).

    The warm-up starts at lr / warmup_steps, not 0, so the first step already learns.
    """
    lr, total = float(tcfg.lr), max(int(tcfg.num_steps), 1)
    warmup = min(max(int(tcfg.warmup_steps), 0), total)
    kind = tcfg.schedule
    if kind not in ("cosine", "constant"):
        raise InputError(f"train.schedule must be 'cosine' or 'constant', not {kind!r}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1.0) / warmup) if warmup > 0 else 1.0
        if kind == "constant":
            return lr * ramp
        frac = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
        return lr * ramp * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return schedule


def _whole(value: float, name: str) -> int:
    if float(value) != int(value):
        raise InputError(f"train.lr_schedule='reference' counts whole epochs; {name}={value}")
    return int(value)


def lr_schedule(tcfg, steps_per_epoch: int | None = None) -> optax.Schedule:
    """The schedule `train.lr_schedule` names.

    "reference" needs `steps_per_epoch`; its epoch count is `train.num_epochs`, or
    ceil(num_steps / steps_per_epoch) when that is 0.
    """
    kind = tcfg.lr_schedule
    if kind not in LR_SCHEDULES:
        raise InputError(f"train.lr_schedule must be one of {LR_SCHEDULES}, not {kind!r}")
    if kind == "per_step":
        return _per_step_schedule(tcfg)
    if steps_per_epoch is None:
        raise InputError("train.lr_schedule='reference' needs the number of steps per epoch")
    steps_per_epoch = int(steps_per_epoch)
    epochs = _whole(tcfg.num_epochs, "num_epochs")
    if epochs <= 0:
        epochs = -(-max(int(tcfg.num_steps), 1) // max(steps_per_epoch, 1))
    warmup = _whole(tcfg.warmup_epochs, "warmup_epochs")
    return reference_lr_schedule(float(tcfg.lr), warmup, epochs, steps_per_epoch)


def make_optimizer(tcfg, steps_per_epoch: int | None = None) -> optax.GradientTransformation:
    """AdamW (torch's defaults: betas 0.9/0.999, eps 1e-8) with optional global-norm clipping.

    `steps_per_epoch` is needed only by `train.lr_schedule="reference"`.
    """
    parts = []
    if float(tcfg.grad_clip) > 0:
        parts.append(optax.clip_by_global_norm(float(tcfg.grad_clip)))
    parts.append(
        optax.adamw(lr_schedule(tcfg, steps_per_epoch), b1=0.9, b2=0.999, eps=1e-8,
                    weight_decay=float(tcfg.weight_decay))
    )
    return optax.chain(*parts)
