"""The `volume` protocol (Behrendt et al.): the test slices stacked into volumes, scored at
`evaluate.volume_threshold` or, below 0, at the best Dice on the val split; `volumes.csv`."""

from __future__ import annotations

import os

from madad_jax.core.errors import InputError
from madad_jax.evaluation import volume_metrics as vm
from madad_jax.evaluation.protocols.context import Context


def run(ctx: Context) -> None:
    """Adds `volume` to `ctx.result` and `volumes.csv` to the folder."""
    if ctx.segs is None:
        return
    e = ctx.config.evaluate
    threshold = float(e.volume_threshold)
    val_volumes = None
    if threshold < 0:
        val = ctx.val_split()
        if val is None or val.get("segmentations") is None:
            raise InputError(
                "evaluate.protocols has 'volume' but there is no validation split with "
                "segmentations to choose its threshold; set evaluate.volume_threshold"
            )
        val_volumes = vm.volumes_from_eval(val, ctx.val_maps())
    edges = tuple(e.size_edges_volume) or None
    ctx.result["volume"], rows = vm.volume_protocol(
        vm.volumes_from_eval(ctx.test, ctx.maps), val_volumes,
        None if threshold < 0 else threshold, edges=edges)
    ctx.writers.append(lambda folder: vm.write_csv(os.path.join(folder, "volumes.csv"), rows))
