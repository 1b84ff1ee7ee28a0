"""Every kind of bad input: one line naming the file, skip-or-stop, nothing partial left."""

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from data_helpers import AFFINE, SHAPE, write_set, write_subject

from madad_jax.data import convert
from madad_jax.data.errors import BadInputError
from madad_jax.data.nifti import load_subject, load_volume
from madad_jax.data.pipeline import load_eval_split


def _save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _one_line(err: BadInputError, path) -> str:
    msg = str(err)
    assert "\n" not in msg and msg.startswith(str(path) + ": ")
    return msg


@pytest.fixture
def good(tmp_path):
    return write_subject(tmp_path / "in", "sub00", np.random.default_rng(0), lesion=1)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "cannot read voxel data|not a readable"),
        (lambda p: p.write_bytes(b"\x00" * 400), "not a readable NIfTI"),
        (lambda p: _save(p, np.ones((16, 20), np.float32)), "expected a 3D volume, got 2D"),
        (lambda p: _save(p, np.ones((16, 20, 12, 3), np.float32)), "expected a 3D volume, got 4D"),
        (lambda p: _save(p, np.where(np.arange(16 * 20 * 12).reshape(SHAPE) == 5, np.nan,
                                     1.0).astype(np.float32)), "1 NaN/Inf voxels"),
        (lambda p: _save(p, np.full(SHAPE, np.inf, np.float32)), "3840 NaN/Inf voxels"),
    ],
    ids=["truncated", "garbage", "2d", "4d", "nan", "inf"],
)
def test_bad_image_files(good, make, match):
    path = good["image"]
    make(path)
    with pytest.raises(BadInputError, match=match) as info:
        load_volume(path)
    _one_line(info.value, path)


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    vol = np.random.default_rng(0).random((*SHAPE, 1)).astype(np.float32)
    assert load_volume(_save(tmp_path / "a.nii.gz", vol)).data.ndim == 3


def test_mask_and_segmentation_mismatches(good, tmp_path):
    mask, seg = good["brainmask"], good["segmentation"]
    _save(mask, np.zeros(SHAPE, np.uint8))
    with pytest.raises(BadInputError, match="empty brain mask") as info:
        load_subject("sub00", good["image"], mask, seg)
    _one_line(info.value, mask)
    _save(mask, np.ones((16, 20, 11), np.uint8))
    with pytest.raises(BadInputError, match=r"brain mask shape \(16, 20, 11\) differs"):
        load_subject("sub00", good["image"], mask, seg)
    _save(mask, np.ones(SHAPE, np.uint8))
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    _save(seg, np.zeros(SHAPE, np.uint8), shifted)
    with pytest.raises(BadInputError, match="segmentation affine differs") as info:
        load_subject("sub00", good["image"], mask, seg)
    _one_line(info.value, seg)
    # Without a mask file, an all-zero image has an empty brain mask.
    zero = _save(tmp_path / "zero.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(BadInputError, match="empty brain mask"):
        load_subject("zero", zero)


def _no_partial(out):
    names = os.listdir(out) if os.path.isdir(out) else []
    assert not [n for n in names if ".tmp-" in n or n.endswith(".manifest.json")], names


def test_skip_versus_stop_in_conversion(tmp_path):
    write_set(tmp_path / "in", 3, seed=1)
    bad = tmp_path / "in" / "sub01-T2.nii.gz"
    _save(bad, np.full(SHAPE, np.nan, np.float32))
    kw = dict(modality="T2", image_size=16, split="train", policies="all", progress=False,
              subjects_per_shard=3)
    with pytest.raises(BadInputError, match="sub01-T2.nii.gz: .*NaN/Inf"):
        convert.convert_nifti(tmp_path / "in", tmp_path / "stop", bad_input="stop", **kw)
    _no_partial(tmp_path / "stop")
    assert not [n for n in os.listdir(tmp_path / "stop") if "array_record" in n]

    m = convert.convert_nifti(tmp_path / "in", tmp_path / "skip", bad_input="skip", **kw)
    assert m["train"]["subjects"] == ["sub00", "sub02"]
    assert m["train"]["skipped"] == [
        {"path": str(bad), "problem": f"{SHAPE[0] * SHAPE[1] * SHAPE[2]} NaN/Inf voxels",
         "unit": "sub01"}]
    assert set(load_eval_split(tmp_path / "skip", "train")["subjects"]) == {"sub00", "sub02"}


def test_missing_modality_and_mask(tmp_path):
    write_set(tmp_path / "in", 2, seed=2)
    (tmp_path / "in" / "sub01-T2.nii.gz").unlink()
    with pytest.raises(BadInputError, match="no image \\(missing modality\\) for subject sub01"):
        convert.convert_nifti(tmp_path / "in", tmp_path / "o", modality="T2", image_size=16,
                              split="test", bad_input="stop", progress=False)
    _no_partial(tmp_path / "o")
    write_set(tmp_path / "in", 2, seed=2)
    (tmp_path / "in" / "sub00-brainmask.nii.gz").unlink()
    with pytest.raises(BadInputError, match="sub00-brainmask.nii\\*: no brain mask for subject"):
        convert.convert_nifti(tmp_path / "in", tmp_path / "o", modality="T2", image_size=16,
                              split="test", bad_input="stop", progress=False)
    with pytest.raises(BadInputError, match="no FLAIR images"):
        convert.convert_nifti(tmp_path / "in", tmp_path / "o", modality="FLAIR", image_size=16,
                              split="test", progress=False)


def test_unreadable_inputs(tmp_path):
    with pytest.raises(BadInputError, match="nowhere: directory not found"):
        convert.convert_nifti(tmp_path / "nowhere", tmp_path / "o", modality="T2", image_size=16,
                              split="test", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="file: not a directory"):
        convert.convert_png(tmp_path / "file", tmp_path / "o", modality="T2", image_size=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no NIfTI files match"):
        convert.convert_nifti(tmp_path / "empty", tmp_path / "o", modality="T2", image_size=16,
                              split="test", progress=False)
    if os.geteuid() != 0:  # root reads any directory
        locked = tmp_path / "locked"
        locked.mkdir(mode=0)
        try:
            with pytest.raises(BadInputError, match="not readable"):
                convert.convert_nifti(locked, tmp_path / "o", modality="T2", image_size=16,
                                      split="test", progress=False)
        finally:
            locked.chmod(0o755)


def test_bad_png_in_conversion(case_dir, tmp_path):
    import shutil

    root = tmp_path / "png"
    shutil.copytree(case_dir / "slices", root)
    bad = root / "test" / "case003-slice_63-brainmask.png"
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(BadInputError, match="case003-slice_63-brainmask.png"):
        convert.convert_png(root, tmp_path / "stop", modality="T2", image_size=64,
                            bad_input="stop", progress=False)
    _no_partial(tmp_path / "stop")
    m = convert.convert_png(root, tmp_path / "skip", modality="T2", image_size=64,
                            progress=False)
    assert m["test"]["num_records"] == 5 and m["test"]["skipped"][0]["path"] == str(bad)


def test_cli_prints_one_line_and_exits_1(tmp_path):
    write_set(tmp_path / "in", 2, seed=3)
    bad = tmp_path / "in" / "sub00-T2.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    cmd = [sys.executable, "-m", "madad_jax.data.convert", "nifti", str(tmp_path / "in"),
           str(tmp_path / "out"), "--modality", "T2", "--image-size", "16", "--split", "test",
           "--no-progress"]
    proc = subprocess.run([*cmd, "--bad-input", "stop"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable NIfTI"), lines
    _no_partial(tmp_path / "out")
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    assert f"skipped {bad}: not a readable NIfTI" in proc.stderr
    assert "test: " in proc.stdout and "1 input(s) skipped" in proc.stdout
