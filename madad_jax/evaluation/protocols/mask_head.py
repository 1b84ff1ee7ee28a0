"""The `mask_head` protocol: the mask head's lesion-cell AUROC on the lesioned val split."""

from __future__ import annotations

from madad_jax.evaluation import mask_head
from madad_jax.evaluation.protocols.context import Context


def run(ctx: Context) -> None:
    """Adds `mask_head` to `ctx.result` when there is a lesioned val split."""
    if ctx.segs is None or ctx.val_sampler is None:
        return
    s = ctx.config.sample
    ctx.result["mask_head"] = dict(val=mask_head.lesion_cell_auroc(
        ctx.val_sampler, ctx.val, int(s.ddim_steps), float(s.flag_threshold), float(s.eta)))
