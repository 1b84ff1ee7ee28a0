"""How well the mask head flags lesions: its lesion-cell AUROC on a lesioned split.

A latent cell (one position of the h x w latent, f x f image pixels) counts when at least
half of its pixels are brain. It is a lesion cell when at least half of its pixels are
lesion, a healthy cell when none is; cells partly lesion are left out. The score of a cell
is the head's P(anomalous) = 1 - P(clean), at the first DDIM step (the head's view of the
input latent) and averaged over the S steps (what the `mask` map uses).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from sklearn.metrics import roc_auc_score

from madad_jax.sampling import anomaly


def cell_fractions(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(N,H,W) binary masks -> (N,h,w) fraction of each latent cell's pixels set."""
    n, hh, ww = masks.shape
    h, w = hw
    return np.asarray(masks, np.float64).reshape(n, h, hh // h, w, ww // w).mean(axis=(2, 4))


def cell_labels(brainmasks: np.ndarray, segs: np.ndarray,
                hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(kept (N,h,w) bool, lesion (N,h,w) bool) of the rule in the module docstring."""
    brain = cell_fractions(brainmasks > 0.5, hw) >= 0.5
    les = cell_fractions(segs > 0, hw)
    return brain & ((les >= 0.5) | (les == 0)), les >= 0.5


def cell_auroc(scores: np.ndarray, kept: np.ndarray, lesion: np.ndarray) -> float | None:
    y = lesion[kept]
    if not 0 < y.sum() < y.size:
        return None
    return float(roc_auc_score(y, np.asarray(scores, np.float64)[kept]))


def lesion_cell_auroc(sampler, split: dict[str, Any], steps: int, thr: float,
                      eta: float) -> dict[str, Any]:
    """The head's lesion-cell AUROC on `split` (images, brainmasks, segmentations) through
    `sampler` (an `evaluation.selection.Sampler` of those images) at one setting."""
    key = ("mask_head", int(steps))
    if key not in sampler._fns:
        sampler._fns[key] = anomaly.make_sweep_fn(sampler.models.vae, sampler.models.denoiser,
                                                  sampler.config, int(steps), trajectory=True)
    fn = sampler._fns[key]
    enc = sampler.encoded()

    def infer(params, z, k):  # batch first, as run_batches cuts and joins along axis 0
        return {"p": jnp.moveaxis(fn(params, z, k, thr, eta)["steps_p_clean"], 0, 1)}

    out = sampler._batches(infer, enc["encoded"], ("p",))
    p_anom = 1.0 - np.asarray(out["p"], np.float64)[..., 0]  # (N,S,h,w)
    hw = p_anom.shape[2:]
    kept, lesion = cell_labels(np.asarray(split["brainmasks"]),
                               np.asarray(split["segmentations"]), hw)
    return dict(first_step=cell_auroc(p_anom[:, 0], kept, lesion),
                mean_over_steps=cell_auroc(p_anom.mean(axis=1), kept, lesion),
                ddim_steps=int(steps), flag_threshold=float(thr), eta=float(eta),
                n_cells=int(kept.sum()), n_lesion_cells=int((kept & lesion).sum()),
                cells="brain cells (>= half brain); lesion >= half lesion, healthy no lesion")
