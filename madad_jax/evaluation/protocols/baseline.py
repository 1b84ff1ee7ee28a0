"""The `baseline` protocol: an intensity-threshold detector on the same test slices, its
variant chosen on the lesioned val split when there is one (`evaluate.baseline` switches it)."""

from __future__ import annotations

from madad_jax.evaluation import baseline
from madad_jax.evaluation.protocols.context import Context


def run(ctx: Context) -> None:
    """Adds `baseline` to `ctx.result`."""
    if ctx.segs is None or not ctx.config.evaluate.baseline:
        return
    val, test = ctx.val, ctx.test
    ctx.result["baseline"] = baseline.evaluate(
        test["images"], test["brainmasks"], ctx.segs,
        select_on=None if val is None else (
            val["images"], val["brainmasks"], val["segmentations"]))
