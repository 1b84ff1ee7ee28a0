"""The denoiser's optimizer: AdamW with a warm-up + cosine learning-rate schedule.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


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
