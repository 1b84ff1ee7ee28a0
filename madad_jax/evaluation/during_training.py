"""`train.eval_every_steps`: a few val slices scored while the denoiser trains.

Every N steps the current weights (the EMA's, as evaluate reads them) map up to
`PROBE_SLICES` val slices, spread over the sorted split; TensorBoard gets the map's max Dice,
AUROC and AP, the mask head's lesion-cell AUROC (its map averaged over the steps), and one
panel image (input | healthy counterpart | map | ground truth per row) under `train_eval/`.
It reads the sampling settings of `config.sample`; nothing is written besides DIR/tb.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from madad_jax.data import sources
from madad_jax.evaluation import mask_head, metrics
from madad_jax.evaluation.evaluate import panel_indices
from madad_jax.evaluation.protocols.context import sorted_split
from madad_jax.sampling import inferencer, loading

PROBE_SLICES = 8
KEYS = ("anomaly_map", "sample", "mean_anomalous")

Hook = Callable[[int, dict[str, Any], Any], None]  # (step done, train state, Logger)


def _probe_split(config) -> dict[str, Any] | None:
    """Up to `PROBE_SLICES` val slices with segmentations, spread over the sorted split."""
    val = sources.eval_slices(config, "val")
    if val is None or val.get("segmentations") is None:
        return None
    val = sorted_split(val)
    sel = panel_indices(len(val["names"]), PROBE_SLICES)
    return {k: val[k][sel] for k in ("images", "brainmasks", "segmentations")}


def panel(images: np.ndarray, samples: np.ndarray, maps: np.ndarray,
          segs: np.ndarray) -> np.ndarray:
    """(rows*H, 4*W) float32 in [0, 1]: input | healthy counterpart | map | ground truth."""
    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(x.shape[0], x.shape[1], x.shape[2])
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)

    cols = [unit(images), unit(samples), np.clip(maps, 0.0, 1.0), (segs > 0).astype(np.float32)]
    return np.concatenate([np.concatenate([c[i] for c in cols], axis=1)
                           for i in range(len(images))], axis=0)


def scores(split: dict[str, Any], out: dict[str, np.ndarray]) -> dict[str, float]:
    """The map's max Dice / AUROC / AP and the mask head's lesion-cell AUROC (NaN when the
    slices hold no lesion or no healthy part)."""
    segs = np.asarray(split["segmentations"]).reshape(out["anomaly_map"].shape)
    m = metrics.slice_metrics(out["anomaly_map"], segs)
    hw = out["mean_anomalous"].shape[1:3]
    kept, lesion = mask_head.cell_labels(
        np.asarray(split["brainmasks"]).reshape(segs.shape), segs, hw)
    head = mask_head.cell_auroc(out["mean_anomalous"], kept, lesion)
    return dict(max_dice=float(m["max_dice"]), auroc=float(m["auroc"]), ap=float(m["ap"]),
                mask_head_auroc=math.nan if head is None else head)


def probe(config, workdir: str) -> Hook | None:
    """The hook `training.loop.fit` calls after each step; None when `eval_every_steps` is 0
    or there is no val split with segmentations (a warning line then)."""
    every = int(config.train.eval_every_steps)
    if every <= 0:
        return None
    split = _probe_split(config)
    if split is None:
        print(f"warning: train.eval_every_steps={every} needs a val split with "
              "segmentations; no scores during training", file=sys.stderr)
        return None
    import jax

    models = loading.build_models(config)
    seed = jax.random.key(int(config.sample.seed))
    use_ema = bool(config.evaluate.use_ema)  # the weights evaluate would read

    def hook(done: int, state: dict[str, Any], log) -> None:
        if done % every:
            return
        den = state["ema"] if use_ema and "ema" in state else state["params"]["denoiser"]
        params = {"vae": state["params"]["vae"], "denoiser": den}
        out = inferencer.inferencer(config, models)(
            params, split["images"], seed, len(split["images"]), keys=KEYS)
        log.scalars(done, scores(split, out), prefix="train_eval")
        log.image(done, "train_eval/panels", panel(split["images"], out["sample"],
                                                   out["anomaly_map"], split["segmentations"]))

    return hook
