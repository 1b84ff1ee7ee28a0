"""The `selection` protocol: what `evaluate.select` chose on the val split, and from what
(the choice itself is made before the test maps, in `context.open_context`)."""

from __future__ import annotations

from madad_jax.evaluation.protocols.context import Context


def run(ctx: Context) -> None:
    """Adds `selected_on` and `selection` to `ctx.result` when settings were chosen."""
    if ctx.segs is None or ctx.chosen is None:
        return
    ctx.result["selected_on"] = "val"
    ctx.result["selection"] = ctx.selection
