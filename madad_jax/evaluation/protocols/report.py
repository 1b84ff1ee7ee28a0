"""The `report` protocol: the offline HTML report of the evaluate folder."""

from __future__ import annotations

import os

from madad_jax.evaluation import report
from madad_jax.evaluation.protocols.context import PANELS, Context


def run(ctx: Context) -> None:
    """Registers `report.html` (metrics, curves and the panels)."""
    if ctx.segs is None:
        return
    ctx.writers.append(lambda folder: report.evaluate_report(
        os.path.join(folder, "report.html"), ctx.result, ctx.maps, ctx.segs,
        os.path.join(folder, PANELS)))
