"""The `results` protocol: calibration, detection and intervals (`evaluation.results`), the
calibration file and the model card, in the evaluate folder and beside the checkpoint."""

from __future__ import annotations

from typing import Any

from madad_jax.evaluation import results
from madad_jax.evaluation.protocols.context import Context


def run(ctx: Context) -> None:
    """Adds `detection`, `calibrated` and `intervals` to `ctx.result`; registers the files."""
    if ctx.segs is None:
        return
    r = ctx.restored
    extras = results.extend(ctx.config, ctx.result, ctx.test, ctx.maps, ctx.val_split,
                            ctx.val_maps, r.directory, r.step, ctx.map_fn)
    card: dict[str, Any] = {}

    def write(folder: str) -> None:
        card.update(results.model_card(ctx.config, ctx.result, r.directory, r.step))
        results.write(folder, extras)
        results.write_card(folder, card)

    ctx.writers.append(write)
    ctx.after.append(lambda: results.save_beside_checkpoint(r.directory, extras, card))
