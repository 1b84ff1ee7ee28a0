"""The `evaluate` mode: anomaly maps for a test split and the reference's metrics.

Writes, atomically, under `DIR/evaluate/`:
- `metrics.json`: `max_dice`, `f1_max`, `auroc`, `ap` (the reference's slice protocol,
  `madad_jax.evaluation.metrics`), the settings they were computed with, a lesion-size breakdown,
  optionally the per-volume protocol (`volume`) and an intensity-threshold `baseline`;
- `anomaly_maps.npz`: `anomaly_maps` float32 (N,H,W) and `names` str (N,), sorted by name;
- `slices.csv` (and `volumes.csv` with the per-volume protocol): one row per unit;
- `panels.png`: input | healthy counterpart | map | ground truth | mask head, a few slices.

What is scored is `evaluate.protocols`: plug-ins in `madad_jax.evaluation.protocols`, each
with one entry point `run(ctx)`, run in their fixed order over one shared context.

The checkpoint is `config.checkpoint`, or the workdir's latest. Its stored architecture
replaces the config's, so any checkpoint evaluates with any config file. With several
processes every process computes the maps on its own devices and process 0 writes.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from madad_jax.core import files
from madad_jax.evaluation import protocols as plugins
from madad_jax.evaluation.protocols.context import PANELS, Context, open_context

RESULT_DIR = "evaluate"


def write_results(out_dir: str, result: dict[str, Any], maps: np.ndarray,
                  names: list[str]) -> None:
    """`anomaly_maps.npz` and `metrics.json` into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, anomaly_maps=maps.astype(np.float32), names=np.asarray(names, dtype=str))
    files.atomic_write(os.path.join(out_dir, "anomaly_maps.npz"), buf.getvalue())
    files.write_json_atomic(os.path.join(out_dir, "metrics.json"), files.to_json(result),
                            indent=2, sort_keys=False, allow_nan=False)


def panel_indices(n: int, k: int) -> list[int]:
    """k slice indices spread evenly over n sorted slices (all of them when n <= k)."""
    if n <= 0 or k <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(k, n))})


def write_panels(path: str, test: dict[str, Any], outputs: dict[str, np.ndarray],
                 k: int) -> str | None:
    """PNG rows input | healthy counterpart | map | [ground truth] | mask head, for k slices."""
    from madad_jax.evaluation import figures

    sel = panel_indices(len(test["names"]), k)
    if not sel:
        return None
    segs = test.get("segmentations")
    return figures.slice_panels(
        path, test["images"][sel], outputs["sample"][sel], outputs["anomaly_map"][sel],
        None if segs is None else segs[sel], titles=[test["names"][i] for i in sel],
        mask_maps=outputs["mean_anomalous"][sel],
    )


def _write(ctx: Context, out_dir: str) -> None:
    """The whole result set, or none of it: written beside `out_dir`, then renamed."""
    with files.atomic_dir(out_dir) as tmp:
        write_results(tmp, ctx.result, ctx.maps, ctx.test["names"])
        write_panels(os.path.join(tmp, PANELS), ctx.test, ctx.outputs,
                     int(ctx.config.evaluate.num_panels))
        for writer in ctx.writers:
            writer(tmp)
    for then in ctx.after:
        then()


def run(config, workdir: str) -> dict[str, Any]:
    """Evaluate the checkpoint on the test split; returns what metrics.json holds."""
    names = plugins.resolve(config.evaluate.protocols)
    out_dir = os.path.join(workdir, RESULT_DIR)
    ctx = open_context(config, workdir, names, out_dir)
    # Which plug-in runs (the selection sweep shows no bar of its own): a bar, not lines.
    steps = tqdm(names, desc="evaluate protocols", unit="protocol", file=sys.stderr,
                 disable=jax.process_index() != 0)
    for name in steps:
        steps.set_postfix_str(name, refresh=True)
        plugins.entry(name)(ctx)
    steps.close()
    if jax.process_index() == 0:
        _write(ctx, out_dir)
        summary = {k: ctx.result.get(k) for k in ("max_dice", "f1_max", "auroc", "ap")}
        shown = json.dumps(files.to_json(summary))
        print(f"evaluate: {len(ctx.maps)} slices, {shown} -> {out_dir}", flush=True)
    return ctx.result
