"""The offline demo data set (MNI152 subjects with synthetic lesions) and the threshold baseline."""

import dataclasses
import glob
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from madad_jax.data import synthetic as syn
from madad_jax.evaluation import baseline

# 3.25 mm voxels: the demo's 64x64 slices, and one cached template for every test here.
GRID = syn.Grid(size=64)
NO_MASS = syn.LesionSpec(mass_effect=(0.0, 0.0))
REPO = Path(__file__).resolve().parents[1]


def _pair(index: int, lesions: syn.LesionSpec) -> tuple[syn.Subject, syn.Subject]:
    """A test subject with lesions, and the same subject without them."""
    sick = syn.make_subject(index, "test", 0, GRID, lesions=lesions)
    healthy = syn.make_subject(index, "test", 0, GRID, lesions=None)
    return sick, healthy


def test_deterministic_given_seed():
    a = syn.make_subject(3, "test", 7, GRID)
    b = syn.make_subject(3, "test", 7, GRID)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.seg, b.seg)
    assert a.lesions == b.lesions
    c = syn.make_subject(3, "test", 8, GRID)
    assert np.abs(a.image - c.image).mean() > 0.02


def test_subjects_differ():
    s = [syn.make_subject(i, "train", 0, GRID, lesions=None) for i in range(3)]
    for a, b in [(s[0], s[1]), (s[0], s[2]), (s[1], s[2])]:
        assert a.image.shape == GRID.shape and a.seg is None
        both = (a.brainmask > 0) & (b.brainmask > 0)
        assert np.abs(a.image - b.image)[both].mean() > 0.03
        inter = (a.brainmask & b.brainmask).sum()
        assert 2 * inter / (a.brainmask.sum() + b.brainmask.sum()) < 0.99  # shapes differ too
    # training subject i does not depend on how many are asked for
    split = syn.make_split("train", 2, seed=0, image_size=64)
    assert split["segmentations"] is None
    assert len(split["names"]) == 2 * GRID.shape[2] and split["names"] == sorted(split["names"])
    np.testing.assert_array_equal(split["brainmasks"][0], np.rot90(s[0].brainmask[:, :, 0]))


def test_lesions_inside_brain_and_counted():
    spec = syn.LesionSpec(count=(1, 3))
    for i in range(4):
        s = syn.make_subject(i, "test", 0, GRID, lesions=spec)
        assert 1 <= len(s.lesions) <= 3
        assert s.seg.any()
        assert not (s.seg.astype(bool) & ~s.brainmask.astype(bool)).any()
        assert (s.image[s.brainmask == 0] == 0).all()  # skull-stripped
        for les in s.lesions:
            vox = np.round(np.linalg.solve(GRID.affine, [*les["centre_mm"], 1.0])[:3]).astype(int)
            assert s.brainmask[tuple(vox)] == 1


def test_segmentation_matches_lesion():
    sick, healthy = _pair(5, NO_MASS)
    np.testing.assert_array_equal(sick.brainmask, healthy.brainmask)
    changed = np.abs(sick.image - healthy.image) > 1e-6
    seg = sick.seg.astype(bool)
    # the image changes only on the lesion and its partial-volume rim
    assert not (changed & ~ndi.binary_dilation(seg, iterations=2)).any()
    assert changed[seg].mean() > 0.95
    # with mass effect the surrounding tissue moves as well
    pushed, _ = _pair(5, syn.LesionSpec(mass_effect=(0.3, 0.3)))
    around = ndi.binary_dilation(pushed.seg, iterations=4) & ~ndi.binary_dilation(
        pushed.seg, iterations=2
    )
    assert np.abs(pushed.image - healthy.image)[around].mean() > 0.01


@pytest.mark.parametrize(
    "contrast, lo, hi", [("hypo", 0.0, 0.9), ("iso", 0.85, 1.15), ("hyper", 1.05, 9.0)]
)
def test_contrast_settings(contrast, lo, hi):
    spec = dataclasses.replace(NO_MASS, contrasts=(contrast,), contrast_probs=(1.0,), count=(1, 1))
    for i in range(2):
        sick, healthy = _pair(i, spec)
        assert [les["contrast"] for les in sick.lesions] == [contrast]
        seg = sick.seg.astype(bool)
        ratio = sick.image[seg].mean() / healthy.image[seg].mean()
        assert lo < ratio < hi, (contrast, i, ratio)


def test_bad_specs_refused():
    with pytest.raises(ValueError):
        syn.LesionSpec(contrasts=("glowing",), contrast_probs=(1.0,))
    with pytest.raises(ValueError):
        syn.make_split("test", 1, slices="thickest", lesions=None)
    # healthy subjects under a one-slice policy: one slice each (the test_healthy split)
    one = syn.make_split("test_healthy", 2, image_size=32, slices="largest", lesions=None)
    assert len(one["names"]) == 2 and one["segmentations"] is None


def test_nifti_written_and_converted_like_user_data(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        syn.main(
            [
                "--out",
                str(out),
                "--n-train",
                "1",
                "--n-test",
                "1",
                "--seed",
                "3",
                "--voxel-mm",
                "3.25",
            ]
        )
        == 0
    )
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [
        "demo.json",
        "test/demo_test_000_T1.nii.gz",
        "test/demo_test_000_brainmask.nii.gz",
        "test/demo_test_000_seg.nii.gz",
        "train/demo_train_000_T1.nii.gz",
        "train/demo_train_000_brainmask.nii.gz",
    ]
    want = syn.make_subject(0, "test", 3, GRID)
    for name, arr, dtype in [
        ("T1", want.image, np.float32),
        ("brainmask", want.brainmask, np.uint8),
        ("seg", want.seg, np.uint8),
    ]:
        img = nib.load(out / "test" / f"demo_test_000_{name}.nii.gz")
        assert img.shape == GRID.shape and img.get_data_dtype() == dtype
        np.testing.assert_allclose(img.affine, GRID.affine)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.header.get_zooms() == (3.25, 3.25, 3.0)
        np.testing.assert_array_equal(np.asarray(img.dataobj), arr)
    # the brain sits inside the field of view with a margin
    mask = want.brainmask.any(axis=2)
    assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any()

    # the NIfTI converter turns the files into the same slices as the in-memory path
    from madad_jax.data import convert, records

    convert.convert_nifti(
        out,
        tmp_path / "ar",
        modality="T1",
        image_size=64,
        layout="synthetic",
        split_dirs=True,
        policies="train=all,test=largest_lesion",
        progress=False,
        bad_input="stop",
    )
    for split, kw in [("train", {}), ("test", dict(slices="largest", lesions=syn.LesionSpec()))]:
        mem = syn.make_split(split, 1, seed=3, image_size=64, **kw)
        recs = {
            r["name"]: r
            for p in sorted(glob.glob(str(tmp_path / "ar" / f"{split}.array_record-*")))
            for r in records.read_shard(p)
        }
        assert sorted(recs) == mem["names"]
        for i, name in enumerate(mem["names"]):
            np.testing.assert_array_equal(
                recs[name]["image"].reshape(64, 64), mem["images"][i, ..., 0]
            )
            np.testing.assert_array_equal(
                recs[name]["brainmask"].reshape(64, 64), mem["brainmasks"][i]
            )
            if split == "test":
                np.testing.assert_array_equal(
                    recs[name]["segmentation"].reshape(64, 64), mem["segmentations"][i]
                )


def test_cli_bad_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert syn.main(["--out", str(blocker / "sub"), "--n-train", "1", "--n-test", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0] and "Traceback" not in err[0]
    assert syn.main(["--out", str(tmp_path / "x"), "--n-train", "-1"]) == 1
    assert not (tmp_path / "x").exists()


def _demo_config():
    spec = importlib.util.spec_from_file_location("demo_config", REPO / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_baseline_not_near_perfect_on_demo_test_set():
    config = _demo_config()
    assert config.image_size == 64 and config.data.kind == "demo"
    with config.unlocked():
        config.data.demo.n_test = 20
    test = syn.from_config(config, splits=("test",))["test"]
    assert test["images"].shape == (20, 64, 64, 1)  # one slice per subject
    assert all(s.any() for s in test["segmentations"])
    result = baseline.evaluate(test["images"], test["brainmasks"], test["segmentations"])
    # about 0.14 max Dice (AUROC about 0.8): intensity alone does not isolate the lesions
    assert 0.02 < result["max_dice"] < 0.4, result
    assert result["auroc"] > 0.6
    assert result["variant"] in result["variants"]
    assert result["max_dice"] == pytest.approx(max(result["variants"].values()))


def test_baseline_finds_easy_bright_lesions():
    easy = syn.LesionSpec(
        contrasts=("hyper",),
        contrast_probs=(1.0,),
        hyper=(1.6, 1.9),
        hyper_cap_q=1.0,
        texture=(0.0, 0.02),
        mass_effect=(0.0, 0.0),
    )
    test = syn.make_split("test", 10, seed=0, image_size=64, slices="largest", lesions=easy)
    result = baseline.evaluate(test["images"], test["brainmasks"], test["segmentations"])
    assert result["max_dice"] > 0.55, result  # about 0.75
    assert result["variant"].startswith("bright")


def test_score_maps_range_and_background():
    test = syn.make_split(
        "test", 2, seed=1, image_size=64, slices="largest", lesions=syn.LesionSpec()
    )
    for kind in baseline.KINDS:
        for per_slice in (False, True):
            maps = baseline.score_maps(test["images"], test["brainmasks"], kind, 1.0, per_slice)
            assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
            assert maps.min() >= 0.0 and maps.max() <= 1.0
            assert (maps[test["brainmasks"] == 0] == 0).all()
            if per_slice:
                assert np.allclose(maps.reshape(2, -1).max(1), 1.0)
    with pytest.raises(ValueError):
        baseline.score_maps(test["images"], test["brainmasks"], "purple")


def test_t2_like_contrast_inverts_tissues():
    t1 = syn.make_subject(0, "train", 0, GRID, lesions=None, modality="T1")
    t2 = syn.make_subject(0, "train", 0, GRID, lesions=None, modality="T2")
    np.testing.assert_array_equal(t1.brainmask, t2.brainmask)  # same anatomy
    brain = t1.brainmask > 0
    dark_t1 = brain & (t1.image < np.quantile(t1.image[brain], 0.05))  # CSF on T1
    bright_t1 = brain & (t1.image > np.quantile(t1.image[brain], 0.9))  # white matter on T1
    assert t2.image[dark_t1].mean() > 1.5 * t2.image[bright_t1].mean()
