"""The held-out test's pieces: the exact best-Dice search, the lesion painter, the install
check, and the mask head's lesion-cell labels."""

import importlib.util

import numpy as np
import pytest

from madad_jax.data import heldout
from madad_jax.data.errors import BadInputError
from madad_jax.evaluation import mask_head
from madad_jax.evaluation.heldout import best_dice, intensity_dice


def _brute(scores, gt):
    best = 0.0
    for t in np.unique(scores):
        p = scores >= t
        best = max(best, 2 * (p & gt).sum() / (p.sum() + gt.sum()))
    return best


def test_best_dice_is_the_exhaustive_best():
    rng = np.random.default_rng(0)
    gt = rng.random(500) < 0.1
    scores = np.round(rng.random(500) + 0.8 * gt, 2)  # ties on purpose
    dice, thr = best_dice(scores, gt)
    assert abs(dice - _brute(scores, gt)) < 1e-12
    p = scores > thr
    assert abs(2 * (p & gt).sum() / (p.sum() + gt.sum()) - dice) < 1e-12
    assert best_dice(scores, np.zeros(500, bool))[0] == 0.0


def test_painted_lesions_follow_their_kind():
    shape = (60, 60, 60)
    mask = np.zeros(shape, bool)
    mask[5:55, 5:55, 5:55] = True
    rng = np.random.default_rng(1)
    image = np.where(mask, 0.8 + 0.02 * rng.standard_normal(shape), 0.0).astype(np.float32)
    affine = np.eye(4)
    for kind, sign in (("hyper", 1), ("hypo", -1)):
        out, seg, recs = heldout.paint(np.random.default_rng(2), image, mask, affine, kind, 1)
        assert seg.sum() > 100 and len(recs) == 1 and not seg[~mask].any()
        assert sign * (out[seg].mean() - image[seg].mean()) > 0.2
        assert np.array_equal(out[~mask], image[~mask])
        res = intensity_dice(out, mask, seg)
        assert res["sign"] == ("bright" if sign > 0 else "dark") and res["dice"] > 0.8


def test_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BadInputError, match="pip install --no-deps deepmriprep"):
        heldout.template_path("test")
    with pytest.raises(ValueError, match="held-out split"):
        heldout.template_path("train")


def test_cell_labels_and_auroc():
    brain = np.ones((2, 8, 8))
    seg = np.zeros((2, 8, 8), int)
    seg[0, :4, :4] = 1  # one whole cell of 4x4 pixels on a 2x2 latent
    seg[1, 0, 0] = 1  # a partial cell: left out
    kept, lesion = mask_head.cell_labels(brain, seg, (2, 2))
    assert lesion.sum() == 1 and kept.sum() == 7 and not kept[1, 0, 0]
    scores = np.zeros((2, 2, 2))
    scores[0, 0, 0] = 1.0
    assert mask_head.cell_auroc(scores, kept, lesion) == 1.0
    assert mask_head.cell_auroc(-scores, kept, lesion) == 0.0
    assert mask_head.cell_auroc(scores, kept, np.zeros_like(lesion)) is None
