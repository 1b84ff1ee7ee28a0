"""The reference's slice protocol, checked against its own numbers and a direct loop."""

import copy
import json

import numpy as np
import pytest

from madad_jax.evaluation import metrics


def _reference_loop_dice(maps, segs):
    # The reference's per-threshold, per-slice loop, written plainly for comparison.
    best = 0.0
    for th in np.linspace(0, 1, 201):
        scores = []
        for m, s in zip(maps, segs, strict=True):
            a = copy.deepcopy(np.asarray(m).ravel())
            s = np.asarray(s).ravel()
            a[a > th] = 1
            a[a < 1] = 0
            if s.sum() == 0:
                scores.append(1.0 if a.sum() == 0 else 0.0)
            else:
                scores.append(2.0 * (a * s).sum() / (a.sum() + s.sum() + 1e-6))
        best = max(best, float(np.mean(scores)))
    return best


@pytest.mark.parametrize("steps", [10, 5, 2])
def test_metrics_match_case_json(case_dir, steps):
    pipe = np.load(case_dir / "pipeline.npz")
    want = json.loads((case_dir / "case.json").read_text())["metrics"][f"ddim{steps}"]
    got = metrics.slice_metrics(pipe[f"anomaly_map_ddim{steps}"], pipe["segmentation"])
    for k in ("max_dice", "f1_max", "auroc", "ap"):
        assert abs(got[k] - want[k]) <= 1e-4, (k, got[k], want[k])


def test_max_dice_equals_plain_loop():
    rng = np.random.default_rng(1)
    maps = rng.random((5, 16, 16)).astype(np.float32) ** 2
    maps[0, :2, :2] = 1.0  # values exactly 1 stay positive even at threshold 1
    maps[4] = 0.0  # empty prediction for most thresholds
    segs = np.zeros((5, 16, 16), np.int32)
    segs[0, 3:9, 3:9] = 1
    segs[1, 10:, 10:] = 1
    segs[2] = (maps[2] > 0.5).astype(np.int32)
    # slices 3 and 4: empty ground truth
    want = _reference_loop_dice(maps, segs)
    assert metrics.max_dice(maps, segs) == pytest.approx(want, abs=1e-12)
    curve = metrics.dice_curve(maps, segs)
    assert curve.shape == (201,)
    assert curve.max() == pytest.approx(metrics.max_dice(maps, segs))


def test_empty_ground_truth_rule():
    maps = np.zeros((2, 8, 8), np.float32)
    segs = np.zeros((2, 8, 8), np.int32)
    assert metrics.max_dice(maps, segs) == 1.0
    maps[1, 0, 0] = 1.0  # >= 1 is positive at every threshold
    assert metrics.max_dice(maps, segs) == 0.5


def test_pooled_metrics_perfect_and_shape_check():
    segs = np.zeros((2, 8, 8), np.int32)
    segs[:, 2:5, 2:5] = 1
    maps = segs.astype(np.float32) * 0.7 + 0.1
    m = metrics.slice_metrics(maps, segs)
    assert m["auroc"] == pytest.approx(1.0)
    assert m["ap"] == pytest.approx(1.0)
    assert m["f1_max"] == pytest.approx(1.0, abs=1e-8)
    assert m["max_dice"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        metrics.slice_metrics(maps[:, :4], segs)
