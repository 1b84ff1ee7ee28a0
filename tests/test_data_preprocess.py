"""Slice policies, normalization and the slice <-> volume geometry."""

import json

import nibabel as nib
import numpy as np
import pytest

from madad_jax.data import preprocess
from madad_jax.data.errors import BadInputError
from madad_jax.data.nifti import load_subject


def test_select_slices():
    brain = np.array([0, 5, 50, 100, 100, 100, 100, 80, 9, 0])
    lesion = np.array([0, 0, 0, 3, 7, 0, 0, 0, 0, 0])
    opts = lambda **kw: preprocess.SliceOptions(**kw)  # noqa: E731
    assert preprocess.select_slices(brain, None, opts(policy="all")) == [2, 3, 4, 5, 6, 7]
    assert preprocess.select_slices(brain, None, opts(policy="all", min_brain_fraction=0.0)) \
        == list(range(1, 9))
    assert preprocess.select_slices(brain, lesion, opts(policy="healthy")) == [2, 5, 6, 7]
    assert preprocess.select_slices(brain, lesion, opts(policy="largest_lesion")) == [4]
    assert preprocess.select_slices(brain, lesion * 0, opts(policy="largest_lesion")) == []
    assert preprocess.select_slices(brain, None, opts(policy="middle", middle_fraction=0.5)) \
        == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="slice policy"):
        opts(policy="best")


def test_normalization():
    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    mask = vol >= 100
    out = preprocess.normalize_percentile(vol, mask, (1.0, 99.0))
    assert out.dtype == np.float32 and out[~mask].max() == 0
    assert out.min() == 0 and out.max() == 1
    lo, hi = np.percentile(vol[mask], (1.0, 99.0))
    np.testing.assert_allclose(out[5, 5, 5], (555 - lo) / (hi - lo), rtol=1e-6)
    with pytest.raises(BadInputError, match="constant intensity"):
        preprocess.normalize_percentile(np.ones((4, 4, 4), np.float32), mask[:4, :4, :4] | True,
                                        (1, 99), "x.nii")


@pytest.mark.parametrize("fit, side", [("pad", 20), ("brain", 12)])
def test_geometry_maps_masks_back(tmp_path, fit, side):
    vol = np.zeros((16, 20, 12), np.float32)
    vol[4:12, 5:15, 3:9] = np.random.default_rng(0).uniform(1, 2, (8, 10, 6))
    seg = np.zeros(vol.shape, np.uint8)
    seg[6:9, 7:9, 4:6] = 1
    for name, data in (("t2", vol), ("seg", seg)):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{name}.nii.gz")
    subject = load_subject("s", tmp_path / "t2.nii.gz", segmentation=tmp_path / "seg.nii.gz")
    rows = preprocess.subject_slices(
        subject, preprocess.SliceOptions(image_size=48, policy="all", fit=fit, margin=1))
    assert [r["slice_index"] for r in rows] == list(range(3, 9))
    g = json.loads(rows[0]["geometry"])
    # The axial plane (16, 20) rotates to (20, 16); the brain spans rows 5:15, cols 4:12.
    assert g["plane"] == [20, 16] and g["side"] == side
    assert g["crop"] == ([0, 20, 0, 16] if fit == "pad" else [4, 16, 3, 13])
    idx = [r["slice_index"] for r in rows]
    back = preprocess.slices_to_volume(np.stack([r["segmentation"] for r in rows]), idx, g, 0)
    np.testing.assert_array_equal(back.astype(np.uint8), seg)  # integer zoom: exact
    mask = preprocess.slices_to_volume(np.stack([r["brainmask"] for r in rows]), idx, g, 0)
    np.testing.assert_array_equal(mask > 0, vol > 0)
    assert all(r["image"].shape == (48, 48) and r["image"].dtype == np.float32 for r in rows)
