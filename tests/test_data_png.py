"""The reference PNG layout reader: parity with the reference's loader, and bad files."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from madad_jax.data.errors import BadInputError
from madad_jax.data.png import read_reference_split


def test_matches_reference_pipeline_inputs(case_dir):
    ref = np.load(case_dir / "pipeline.npz")
    out = read_reference_split(case_dir / "slices", "test", "T2", 64)
    assert out["names"] == sorted(out["names"]) and len(out["names"]) == 6
    assert out["names"][0] == "case000-slice_60"
    assert out["images"].shape == (6, 64, 64, 1) and out["images"].dtype == np.float32
    np.testing.assert_array_equal(out["images"][..., 0], ref["image"][:, 0])
    np.testing.assert_array_equal(out["brainmasks"], ref["brainmask"])
    np.testing.assert_array_equal(out["segmentations"], ref["segmentation"])
    assert out["segmentations"].dtype == np.int32


def test_resize_and_masking(case_dir):
    out = read_reference_split(case_dir / "slices", "test", "T2", 32)
    assert out["images"].shape == (6, 32, 32, 1)
    assert out["images"].min() >= -1.0 and out["images"].max() <= 1.0
    # Outside the brain the image is exactly -1 (a zeroed pixel).
    outside = out["brainmasks"] == 0
    assert outside.any()
    assert np.all(out["images"][..., 0][outside] == -1.0)
    assert set(np.unique(out["brainmasks"])) <= {0.0, 1.0}


def _write_slice(folder, stem, size=(40, 40), seg=True, mask_value=255):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"{stem}-T2.png")
    mask = np.zeros(size, np.uint8)
    mask[5:-5, 5:-5] = mask_value
    Image.fromarray(mask).save(folder / f"{stem}-brainmask.png")
    if seg:
        s = np.zeros(size, np.uint8)
        s[10:15, 10:15] = 255
        Image.fromarray(s).save(folder / f"{stem}-segmentation.png")


@pytest.fixture
def split_dir(tmp_path):
    d = tmp_path / "test"
    d.mkdir()
    for i in range(3):
        _write_slice(d, f"s{i}-slice_{i}")
    return tmp_path


def test_train_split_without_segmentations(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    _write_slice(d, "a-slice_1", seg=False)
    out = read_reference_split(tmp_path, "train", "T2", 16)
    assert out["segmentations"] is None and out["names"] == ["a-slice_1"]


def _expect(root, match, **kw):
    with pytest.raises(BadInputError, match=match) as info:
        read_reference_split(root, "test", "T2", 16, **kw)
    assert "\n" not in str(info.value)
    return info.value


def test_truncated_png(split_dir):
    p = split_dir / "test" / "s1-slice_1-T2.png"
    p.write_bytes(p.read_bytes()[:60])
    err = _expect(split_dir, "s1-slice_1-T2.png")
    assert err.path == str(p)
    out = read_reference_split(split_dir, "test", "T2", 16, bad_input="skip")
    assert out["names"] == ["s0-slice_0", "s2-slice_2"]


def test_not_an_image(split_dir):
    (split_dir / "test" / "s0-slice_0-brainmask.png").write_text("hello")
    _expect(split_dir, "s0-slice_0-brainmask.png: not a readable image")


def test_missing_mask_and_segmentation(split_dir):
    (split_dir / "test" / "s2-slice_2-brainmask.png").unlink()
    _expect(split_dir, "s2-slice_2-brainmask.png: file not found")
    _write_slice(split_dir / "test", "s2-slice_2")
    (split_dir / "test" / "s0-slice_0-segmentation.png").unlink()
    _expect(split_dir, "s0-slice_0-segmentation.png: file not found")


def test_shape_mismatch_and_empty_mask(split_dir):
    d = split_dir / "test"
    Image.fromarray(np.full((30, 40), 255, np.uint8)).save(d / "s1-slice_1-brainmask.png")
    _expect(split_dir, "s1-slice_1-brainmask.png: brain mask is")
    _write_slice(d, "s1-slice_1", mask_value=0)
    _expect(split_dir, "s1-slice_1-brainmask.png: empty brain mask")


def test_missing_modality_and_directory(split_dir):
    with pytest.raises(BadInputError, match="no '\\*-FLAIR.png' slices.*present: T2"):
        read_reference_split(split_dir, "test", "FLAIR", 16)
    with pytest.raises(BadInputError, match="val: directory not found"):
        read_reference_split(split_dir, "val", "T2", 16)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any directory")
def test_unreadable_directory(split_dir):
    d = split_dir / "test"
    d.chmod(0)
    try:
        _expect(split_dir, "not readable")
    finally:
        d.chmod(0o755)


def test_all_bad_is_an_error_even_when_skipping(split_dir):
    shutil.rmtree(split_dir / "test")
    (split_dir / "test").mkdir()
    _write_slice(split_dir / "test", "x-slice_0", mask_value=0)
    _expect(split_dir, "no usable slices", bad_input="skip")


def test_split_path_is_a_file(split_dir):
    (split_dir / "val").write_text("not a folder")
    with pytest.raises(BadInputError, match="val: not a directory"):
        read_reference_split(split_dir, "val", "T2", 16)
