"""Conversion to ArrayRecord and loading back: bit-exact round trips, splits, resuming."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from data_helpers import AFFINE, SHAPE, write_set, write_subject

from madad_jax.data import convert, preprocess, records
from madad_jax.data.errors import BadInputError
from madad_jax.data.nifti import load_subject
from madad_jax.data.pipeline import load_eval_split
from madad_jax.data.png import read_reference_split


def test_png_fixture_round_trip_is_bit_exact(case_dir, tmp_path):
    root = case_dir / "slices"
    manifests = convert.convert_png(root, tmp_path, modality="T2", image_size=64, progress=False)
    assert list(manifests) == ["test"] and manifests["test"]["num_records"] == 6
    got = load_eval_split(tmp_path, "test")
    ref = read_reference_split(root, "test", "T2", 64)
    for key in ("images", "brainmasks", "segmentations"):
        assert got[key].dtype == ref[key].dtype and got[key].shape == ref[key].shape
        np.testing.assert_array_equal(got[key], ref[key])
    assert got["names"] == ref["names"]
    assert got["subjects"] == [f"case{i:03d}" for i in range(6)]
    assert got["slice_indices"].tolist() == list(range(60, 66))
    assert got["sources"][0] == str(root / "test" / "case000-slice_60-T2.png")
    pipe = np.load(case_dir / "pipeline.npz")
    np.testing.assert_array_equal(got["images"][..., 0], pipe["image"][:, 0])


def _canonical_reference(path, percentiles=(0.5, 99.5)):
    """Independent of the project's code: nibabel's canonical image, normalized."""
    img = nib.as_closest_canonical(nib.load(path))
    return _normalized(np.asarray(img.dataobj, np.float32), percentiles)


def _normalized(vol, percentiles=(0.5, 99.5)):
    mask = vol != 0
    lo, hi = np.percentile(vol[mask], percentiles).astype(np.float32)
    norm = np.clip((vol - lo) / (hi - lo), 0, 1).astype(np.float32)
    norm[~mask] = 0
    return norm, mask


def test_nifti_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    paths = write_subject(tmp_path / "in", "sub00", rng, lesion=2, mask_file=False)
    out = tmp_path / "out"
    # Canonical shape is (16, 12, 20); axial planes (16, 12) rotate to (12, 16) and pad
    # to 16 x 16, so image_size=16 involves no resampling.
    convert.convert_nifti(tmp_path / "in", out, modality="T2", image_size=16, split="test",
                          policies="all", min_brain_fraction=0.0, progress=False)
    got = load_eval_split(out, "test")
    norm, mask = _canonical_reference(paths["image"])
    keep = [k for k in range(norm.shape[2]) if mask[:, :, k].any()]
    assert sorted(got["slice_indices"].tolist()) == keep
    for i, k in enumerate(got["slice_indices"]):
        plane = np.zeros((16, 16), np.float32)
        plane[2:14] = np.rot90(norm[:, :, k])
        np.testing.assert_array_equal(got["images"][i, :, :, 0], plane * 2 - 1)
        m = np.zeros((16, 16), np.float32)
        m[2:14] = np.rot90(mask[:, :, k])
        np.testing.assert_array_equal(got["brainmasks"][i], m)
    assert got["names"][0].startswith("sub00-slice_")
    assert got["modality"] == "T2" and got["sources"][0] == str(paths["image"])
    np.testing.assert_array_equal(got["affines"][0], nib.load(paths["image"]).affine)
    np.testing.assert_allclose(got["affines"][0], AFFINE, atol=1e-6)

    # And the recorded geometry maps slices back onto the file's own voxel grid.
    geometry = got["geometries"][0]
    back = preprocess.slices_to_volume(got["brainmasks"], got["slice_indices"], geometry, 0)
    native = np.asarray(nib.load(paths["image"]).dataobj) != 0
    assert back.shape == SHAPE
    np.testing.assert_array_equal(back.astype(bool), native)
    img = preprocess.slices_to_volume((got["images"][..., 0] + 1) / 2, got["slice_indices"],
                                      geometry)
    native_vol = np.asarray(nib.load(paths["image"]).dataobj, np.float32)
    native_norm, _ = _normalized(native_vol)
    np.testing.assert_allclose(img, native_norm, atol=1e-7, rtol=0)


def test_nifti_resized_matches_in_memory_preprocessing(tmp_path):
    names = write_set(tmp_path / "in", 4, seed=2)
    out = tmp_path / "out"
    manifests = convert.convert_nifti(
        tmp_path / "in", out, modality="T2", image_size=32, fractions={"train": 0.5, "test": 0.5},
        policies="train=healthy,test=largest_lesion", subjects_per_shard=1, progress=False,
    )
    splits = json.loads((out / "splits.json").read_text())["splits"]
    assert sorted(splits["train"] + splits["test"]) == names
    assert not set(splits["train"]) & set(splits["test"])
    test = load_eval_split(out, "test")
    assert test["subjects"] == splits["test"]  # one (largest-lesion) slice per volume
    for i, name in enumerate(test["subjects"]):
        subject = load_subject(name, out.parent / "in" / f"{name}-T2.nii.gz",
                               out.parent / "in" / f"{name}-brainmask.nii.gz",
                               out.parent / "in" / f"{name}-segmentation.nii.gz")
        rows = preprocess.subject_slices(
            subject, preprocess.SliceOptions(image_size=32, policy="largest_lesion"))
        assert len(rows) == 1 and rows[0]["slice_index"] == test["slice_indices"][i]
        np.testing.assert_array_equal(test["images"][i, :, :, 0], rows[0]["image"])
        np.testing.assert_array_equal(test["segmentations"][i], rows[0]["segmentation"])
        assert test["segmentations"][i].any()
    train = load_eval_split(out, "train")
    assert train["segmentations"].sum() == 0  # healthy slices only
    assert set(train["subjects"]) == set(splits["train"])
    assert manifests["train"]["num_records"] == len(train["names"])
    assert len(manifests["train"]["shards"]) == 2


def test_split_file_is_reused_and_new_subjects_refused(tmp_path):
    write_set(tmp_path / "in", 5, seed=3)
    split_file = tmp_path / "splits.json"
    kw = dict(modality="T2", image_size=16, split_file=split_file, progress=False,
              fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    convert.convert_nifti(tmp_path / "in", tmp_path / "a", seed=0, **kw)
    first = json.loads(split_file.read_text())
    convert.convert_nifti(tmp_path / "in", tmp_path / "b", seed=99, **kw)  # seed ignored now
    assert json.loads(split_file.read_text()) == first
    for split in ("train", "val", "test"):
        a = load_eval_split(tmp_path / "a", split)["subjects"]
        assert set(a) <= set(first["splits"][split])
    write_subject(tmp_path / "in", "newcomer", np.random.default_rng(0), lesion=1)
    with pytest.raises(BadInputError, match="not in this split file.*newcomer"):
        convert.convert_nifti(tmp_path / "in", tmp_path / "c", **kw)


def test_rerun_is_idempotent_and_resumes_after_a_stop(tmp_path):
    write_set(tmp_path / "in", 4, seed=4)
    out = tmp_path / "out"
    kw = dict(modality="T2", image_size=16, split="train", policies="all",
              subjects_per_shard=1, bad_input="stop", progress=False)
    ref = tmp_path / "ref"
    convert.convert_nifti(tmp_path / "in", ref, **kw)

    # A corrupt third subject stops the conversion: two whole shards, nothing partial.
    image = tmp_path / "in" / "sub02-T2.nii.gz"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])
    with pytest.raises(BadInputError, match="sub02-T2.nii.gz"):
        convert.convert_nifti(tmp_path / "in", out, **kw)
    left = sorted(os.listdir(out))
    assert left == ["train.array_record-00000-of-00004", "train.array_record-00001-of-00004",
                    "train.progress.json"]
    stamps = {n: os.stat(out / n).st_mtime_ns for n in left[:2]}

    image.write_bytes(good)  # fixed: the rerun only writes shards 2 and 3
    convert.convert_nifti(tmp_path / "in", out, **kw)
    assert {n: os.stat(out / n).st_mtime_ns for n in stamps} == stamps
    assert "train.progress.json" not in os.listdir(out)
    for i in range(4):
        name = records.shard_name("train", i, 4)
        assert (out / name).read_bytes() == (ref / name).read_bytes()

    # Nothing changed: a third run rewrites nothing, not even the manifest.
    before = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    convert.convert_nifti(tmp_path / "in", out, **kw)
    assert {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)} == before

    # Other settings: the shard set is rebuilt (here as fewer, larger shards).
    convert.convert_nifti(tmp_path / "in", out, **{**kw, "subjects_per_shard": 4})
    assert sorted(n for n in os.listdir(out) if records.is_shard_file(n)) == [
        "train.array_record-00000-of-00001"]


def test_layouts(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(2):
        s = f"BraTS2021_{i:05d}"
        write_subject(tmp_path / "brats" / s, s, rng, lesion=2, modality="flair",
                      mask_file=False, sep="_")
        write_subject(tmp_path / "syn" / "train", f"demo_train_{i:03d}", rng, modality="T1",
                      sep="_")
        write_subject(tmp_path / "syn" / "test", f"demo_test_{i:03d}", rng, lesion=1,
                      modality="T1", sep="_")
    m = convert.convert_nifti(tmp_path / "brats", tmp_path / "o1", modality="FLAIR", image_size=16,
                              layout="brats", split="test", policies="largest_lesion",
                              progress=False)
    assert m["test"]["subjects"] == ["BraTS2021_00000", "BraTS2021_00001"]
    assert m["test"]["num_records"] == 2
    m = convert.convert_nifti(tmp_path / "syn", tmp_path / "o2", modality="T1", image_size=16,
                              layout="synthetic", split_dirs=True, progress=False)
    assert sorted(m) == ["test", "train"]
    assert m["train"]["subjects"] == ["demo_train_000", "demo_train_001"]
    test = load_eval_split(tmp_path / "o2", "test")
    assert test["segmentations"] is not None and test["segmentations"].any()

    # ATLAS 2.0 (BIDS) and IXI's flat names.
    for s in ("sub-r001s001", "sub-r001s002"):
        anat = tmp_path / "atlas" / "R001" / s / "ses-1" / "anat"
        p = write_subject(anat, s, rng, lesion=1, modality="T1", mask_file=False)
        p["image"].rename(anat / f"{s}_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz")
        p["segmentation"].rename(
            anat / f"{s}_ses-1_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz")
    m = convert.convert_nifti(tmp_path / "atlas", tmp_path / "o3", modality="T1",
                              image_size=16, layout="atlas", split="test", progress=False)
    assert m["test"]["subjects"] == ["sub-r001s001", "sub-r001s002"]
    write_subject(tmp_path / "ixi", "IXI002-Guys-0828", rng, modality="T1", mask_file=False)
    write_subject(tmp_path / "ixi", "IXI012-HH-1211", rng, modality="T1", mask_file=False)
    m = convert.convert_nifti(tmp_path / "ixi", tmp_path / "o4", modality="T1", image_size=16,
                              split="train", progress=False)
    assert m["train"]["subjects"] == ["IXI002-Guys-0828", "IXI012-HH-1211"]


def test_cli(tmp_path, capsys):
    write_set(tmp_path / "in", 2, seed=6)
    rc = convert.main(["nifti", str(tmp_path / "in"), str(tmp_path / "out"), "--modality", "T2",
                       "--image-size", "16", "--split", "test", "--policy", "middle",
                       "--no-progress"])
    assert rc == 0
    assert "test: " in capsys.readouterr().out
    got = load_eval_split(tmp_path / "out", "test")
    assert set(got["subjects"]) == {"sub00", "sub01"}
    assert len(got["names"]) < 2 * SHAPE[1]  # middle slices only
