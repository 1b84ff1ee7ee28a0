"""The `slice` protocol: the reference's four numbers over the test slices, the threshold of
the max Dice, the lesion-size breakdown and `slices.csv`."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from madad_jax.evaluation import metrics
from madad_jax.evaluation import volume_metrics as vm
from madad_jax.evaluation.protocols.context import Context


def slice_protocol(maps: np.ndarray, segmentations: np.ndarray) -> dict[str, Any]:
    """The reference's four numbers plus the threshold that gave the max Dice."""
    res = metrics.slice_metrics(maps, segmentations)
    curve = metrics.dice_curve(maps, segmentations)
    res["max_dice_threshold"] = float(metrics.DICE_THRESHOLDS[int(np.argmax(curve))])
    return res


def run(ctx: Context) -> None:
    """Adds the slice figures to `ctx.result` and `slices.csv` to the folder."""
    if ctx.segs is None:
        print("warning: the test split has no segmentations: writing maps without metrics",
              file=sys.stderr)
        ctx.result.update(max_dice=None, f1_max=None, auroc=None, ap=None)
        return
    maps, segs = ctx.maps, ctx.segs
    ctx.result.update(slice_protocol(maps, segs))
    edges = tuple(ctx.config.evaluate.size_edges_slice) or None
    ctx.result["by_lesion_size"] = vm.slice_size_breakdown(maps, segs, edges)
    rows = vm.slice_rows(ctx.test["names"], maps, segs, ctx.result["max_dice_threshold"],
                         edges)
    ctx.writers.append(lambda folder: vm.write_csv(os.path.join(folder, "slices.csv"), rows))
