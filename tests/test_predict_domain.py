"""Predict on the demo's MNI training grid, and the out-of-distribution warnings.

A demo subject written as NIfTI (`write_dataset`) and resampled by predict must give the very
slices `make_split` trains on when its grid is the training grid, and nearly them at 2 mm;
each departure from the training domain must be reported, and an in-distribution scan not.
"""

import dataclasses
import importlib
import json
import os
import re

import nibabel as nib
import numpy as np
import pytest

from madad_jax import config as config_lib
from madad_jax.config import ConfigError, default_config, validate
from madad_jax.data import nifti
from madad_jax.data.synthetic import make_split, write_dataset
from madad_jax.evaluation import domain, predict
from madad_jax.sampling import loading

SUBJECT = "demo_train_000"
# The 2 mm volume is a second sampling of the same subject (its own Rician noise, the
# template interpolated twice): its slices on the training grid differ from make_split's by
# at most this much, in [-1, 1] units inside the brain (measured: 0.05 / 0.16).
MEAN_TOL_2MM, P99_TOL_2MM, MASK_TOL_2MM = 0.08, 0.3, 0.02


def _demo():
    return importlib.import_module("configs.demo").get_config()


def _demo_run_config(cfg) -> dict:
    """What a demo checkpoint stores as its run config (as JSON)."""
    return json.loads(cfg.to_json_best_effort())


@pytest.fixture(scope="module")
def demo_cfg():
    return _demo()


@pytest.fixture(scope="module")
def dom(demo_cfg):
    return domain.training_domain(_demo_run_config(demo_cfg), demo_cfg.image_size)


@pytest.fixture(scope="module")
def written(tmp_path_factory, demo_cfg):
    """The first healthy demo subject as NIfTI on the training grid and at 2 mm, with
    make_split's training slices of it."""
    d = demo_cfg.data.demo
    common = dict(fov_mm=d.fov_mm, z_mm=tuple(d.z_mm), slice_mm=d.slice_mm)
    out = {}
    for name, vox in (("train_grid", d.fov_mm / demo_cfg.image_size), ("2mm", 2.0)):
        folder = tmp_path_factory.mktemp(name)
        write_dataset(folder, 1, 0, seed=d.seed, voxel_mm=vox, **common)
        out[name] = (str(folder / "train" / f"{SUBJECT}_T1.nii.gz"),
                     str(folder / "train" / f"{SUBJECT}_brainmask.nii.gz"))
    ref = make_split("train", 1, seed=d.seed, image_size=demo_cfg.image_size, **common)
    return out, ref


def _subject(paths):
    return nifti.load_subject("s", *paths)


def _rows(subject, dom, cfg):
    slicing = domain.input_slicing(dom, subject)
    return predict.slice_subject(subject, predict.slice_options(cfg), slicing), slicing


def _pairs(rows, ref, dom):
    """(predict row, make_split index) for the rows at training slice positions."""
    out = []
    for r in rows:
        k = (r["z_mm"] - dom.z_mm[0]) / dom.slice_mm
        if abs(k - round(k)) < 1e-6:
            out.append((r, ref["names"].index(f"{SUBJECT}-slice_{int(round(k))}")))
    return out


def _variant(tmp_path, paths, name, affine=None, code=4, step=1):
    """The written subject with another affine, header code or in-plane subsampling."""
    out = []
    for p, what in zip(paths, ("img", "mask"), strict=True):
        img = nib.load(p)
        data = np.asarray(img.dataobj)[::step, ::step]
        a = img.affine.copy() if affine is None else affine(img.affine.copy())
        a[:3, :2] *= step
        new = nib.Nifti1Image(data, a)
        new.set_qform(a, code=code)
        new.set_sform(a, code=code)
        out.append(str(tmp_path / f"{name}_{what}.nii.gz"))
        nib.save(new, out[-1])
    return _subject(out)


def _shift(dx=0.0, dy=0.0, dz=0.0):
    def f(a):
        a[:3, 3] += (dx, dy, dz)
        return a
    return f


# ------------------------------------------------------------------- the MNI training grid


def test_slices_on_the_training_grid_are_the_training_slices(written, dom, demo_cfg):
    paths, ref = written
    rows, slicing = _rows(_subject(paths["train_grid"]), dom, demo_cfg)
    assert slicing.grid.step_mm == dom.slice_mm and slicing.grid.pixel_mm == dom.pixel_mm
    pairs = _pairs(rows, ref, dom)
    assert len(pairs) == len(rows)
    with_brain = [i for i in range(len(ref["names"])) if ref["brainmasks"][i].any()]
    assert sorted(i for _, i in pairs) == with_brain
    for r, i in pairs:
        np.testing.assert_allclose(r["image"], ref["images"][i, ..., 0], atol=1e-5)
        np.testing.assert_array_equal(r["brainmask"], ref["brainmasks"][i])


def test_the_slices_do_not_depend_on_the_voxel_order(tmp_path, written, dom, demo_cfg):
    """The training-grid subject stored left-to-right flipped and with x and y swapped (same
    world positions) gives the same slices."""
    paths, ref = written
    out = []
    for p in paths["train_grid"]:
        img = nib.load(p)
        data = np.asarray(img.dataobj)[::-1].transpose(1, 0, 2)
        a = img.affine.copy()
        a[:3, 3] += (data.shape[1] - 1) * a[:3, 0]
        a[:, 0] *= -1
        a = a[:, [1, 0, 2, 3]]
        new = nib.Nifti1Image(np.ascontiguousarray(data), a)
        new.set_qform(a, code=4)
        new.set_sform(a, code=4)
        out.append(str(tmp_path / os.path.basename(p)))
        nib.save(new, out[-1])
    s = _subject(out)
    assert "".join(nib.aff2axcodes(s.image.affine)) == "ALS"
    rows, _ = _rows(s, dom, demo_cfg)
    for r, i in _pairs(rows, ref, dom):
        np.testing.assert_allclose(r["image"], ref["images"][i, ..., 0], atol=1e-5)
        np.testing.assert_array_equal(r["brainmask"], ref["brainmasks"][i])


def test_slices_of_a_2mm_volume_nearly_match_the_training_slices(written, dom, demo_cfg):
    paths, ref = written
    rows, _ = _rows(_subject(paths["2mm"]), dom, demo_cfg)
    pairs = _pairs(rows, ref, dom)
    assert len(pairs) >= 0.9 * int((ref["brainmasks"].reshape(len(ref["names"]), -1)
                                    .any(1)).sum())
    err, mismatch = [], []
    for r, i in pairs:
        both = (r["brainmask"] > 0) & (ref["brainmasks"][i] > 0)
        err.append(np.abs(r["image"] - ref["images"][i, ..., 0])[both])
        mismatch.append(np.mean((r["brainmask"] > 0) != (ref["brainmasks"][i] > 0)))
    err = np.concatenate(err)
    assert err.mean() < MEAN_TOL_2MM and np.percentile(err, 99) < P99_TOL_2MM
    assert np.mean(mismatch) < MASK_TOL_2MM


def test_maps_go_back_into_the_input_grid(written, dom, demo_cfg):
    """With the normalized slice as the "map", the output is the normalized input in the
    input's own grid: shape, orientation and 0 outside the brain."""
    paths, _ = written
    s = _subject(paths["2mm"])
    slicing = domain.input_slicing(dom, s)

    def identity(images):
        return {"anomaly_map": (images[..., 0] + 1.0) / 2.0, "sample": images}

    pred = predict.predict_subject(s, predict.slice_options(demo_cfg), identity, slicing)
    img = nib.load(paths["2mm"][0])
    brain = np.asarray(nib.load(paths["2mm"][1]).dataobj) > 0
    assert pred.volume.shape == img.shape and pred.volume[~brain].max() == 0.0
    data = np.asarray(img.dataobj)
    assert np.corrcoef(pred.volume[brain], data[brain])[0, 1] > 0.9
    assert (pred.volume[brain] > 0).mean() > 0.95


def test_auto_geometry_and_the_config_key(demo_cfg):
    assert predict.GEOMETRIES == config_lib.PREDICT_GEOMETRIES
    demo = domain.training_domain(_demo_run_config(demo_cfg), 64)
    assert predict.resolve_geometry("auto", demo) == "mni_grid"
    assert predict.resolve_geometry("pad", demo) == "pad"
    other = domain.training_domain(None, 64, {"fit": "brain"})
    assert predict.resolve_geometry("auto", other) == "brain"
    assert predict.resolve_geometry("auto", domain.training_domain(None, 64)) == "pad"
    assert predict.resolve_geometry("mni_grid", other) == "mni_grid"  # data.demo's grid
    # A checkpoint without a stored run config: this run's config says what it was.
    run = default_config()
    run.data.kind = "demo"
    assert predict.training_domain(run, None).mni
    assert not predict.training_domain(default_config(), None).mni
    assert predict.training_domain(default_config(), _demo_run_config(demo_cfg)).mni
    cfg = default_config()
    cfg.predict.geometry = "nearest"
    with pytest.raises(ConfigError, match="predict.geometry"):
        validate(cfg, paths=False)


# ---------------------------------------------------------------------------- the warnings


def _warnings(subject, dom, cfg):
    points = domain.brain_points(subject)
    opts = predict.slice_options(cfg)
    rows = predict.slice_subject(subject, opts, domain.input_slicing(dom, subject, points))
    volume = domain.check_volume(subject, dom, points, opts, "mni_grid")
    slices, outside = domain.check_slices(rows, dom, subject, opts)
    return volume + slices, outside


@pytest.mark.parametrize("grid", ["train_grid", "2mm"])
def test_no_warning_in_distribution(written, dom, demo_cfg, grid):
    paths, _ = written
    assert _warnings(_subject(paths[grid]), dom, demo_cfg) == ([], [])


def test_coarse_voxels_are_reported(tmp_path, written, dom, demo_cfg):
    paths, _ = written
    s = _variant(tmp_path, paths["2mm"], "coarse", step=3)  # 6 mm in plane
    warnings, _ = _warnings(s, dom, demo_cfg)
    assert any("coarser than" in w and "6 x 6" in w for w in warnings), warnings


def test_brain_outside_the_field_of_view_is_reported(tmp_path, written, dom, demo_cfg):
    paths, _ = written
    s = _variant(tmp_path, paths["2mm"], "fov", _shift(dx=60.0))
    warnings, _ = _warnings(s, dom, demo_cfg)
    fov = [w for w in warnings if "outside the training field of view" in w]
    assert len(fov) == 1 and "% of the brain" in fov[0] and "mm beyond" in fov[0], warnings


def test_slices_outside_the_training_z_range_are_reported(tmp_path, written, dom, demo_cfg):
    paths, _ = written
    shift = 5 * dom.slice_mm
    rows, _ = _rows(_subject(paths["train_grid"]), dom, demo_cfg)
    want = [r["z_mm"] + shift for r in rows if r["z_mm"] + shift > dom.z_mm[1] + 1e-6]
    assert len(want) >= 3  # the subject has brain in its top slices
    s = _variant(tmp_path, paths["train_grid"], "z", _shift(dz=shift))
    warnings, outside = _warnings(s, dom, demo_cfg)
    z = [w for w in warnings if "outside the training z range" in w]
    assert len(z) == 1 and z[0].startswith(f"{len(want)} of "), warnings
    np.testing.assert_allclose([o["z_mm"] for o in outside], want)


def test_a_header_without_standard_space_is_reported(tmp_path, written, dom, demo_cfg):
    paths, _ = written
    s = _variant(tmp_path, paths["2mm"], "scanner", code=1)
    warnings, _ = _warnings(s, dom, demo_cfg)
    assert any("declares no standard space" in w for w in warnings), warnings
    assert not any("does not look registered" in w for w in warnings), warnings


def test_a_brain_away_from_mni_is_reported(tmp_path, written, dom, demo_cfg):
    paths, _ = written
    s = _variant(tmp_path, paths["2mm"], "moved", _shift(dy=30.0))
    warnings, _ = _warnings(s, dom, demo_cfg)
    assert any("does not look registered to MNI152" in w and "centroid" in w
               for w in warnings), warnings
    s = _variant(tmp_path, paths["2mm"], "big", lambda a: a @ np.diag([1.5, 1.5, 1.0, 1.0]))
    warnings, _ = _warnings(s, dom, demo_cfg)
    ratios = [float(m) for w in warnings for m in re.findall(r"extent along x is ([\d.]+)", w)]
    assert ratios and ratios[0] > 1.3, warnings


def test_non_demo_models_check_the_recorded_settings(written):
    paths, _ = written
    s = _subject(paths["2mm"])
    cfg = default_config()
    cfg.image_size = 64
    opts = predict.slice_options(cfg)
    rows = predict.slice_subject(s, opts)
    nothing = domain.training_domain(None, 64)
    assert domain.check_volume(s, nothing, opts=opts, geometry="pad") == []
    assert domain.check_slices(rows, nothing, s, opts) == ([], [])
    recorded = domain.training_domain(
        {"data": {"kind": "arrayrecord"}}, 64,
        {"image_size": 128, "axis": 0, "fit": "brain", "min_brain_fraction": 0.1})
    warnings = domain.check_volume(s, recorded, opts=opts, geometry="pad")
    assert len(warnings) == 3, warnings
    assert any("128 px" in w for w in warnings) and any("axis 0" in w for w in warnings)
    demo = domain.training_domain({"data": {"kind": "demo"}}, 64)
    assert any("fixed MNI-space grid" in w
               for w in domain.check_volume(s, demo, opts=opts, geometry="pad"))
    sl_warnings, outside = domain.check_slices(rows, recorded, s, opts)
    area = s.brainmask.sum(axis=(0, 1))
    small = sorted(int(k) for k in np.flatnonzero((area > 0) & (area < 0.1 * area.max())))
    assert [o["slice_index"] for o in outside] == small
    assert len(sl_warnings) == (1 if small else 0)


# ---------------------------------------------------------------------- through predict.run


def test_predict_run_with_a_demo_checkpoint(tmp_path, written, demo_cfg, fixture_ckpt,
                                            monkeypatch, capsys):
    """A checkpoint whose run config says data.kind=demo: predict slices on its MNI grid,
    warns about the slices above the training range, and writes a map in the input grid."""
    paths, _ = written
    s = _variant(tmp_path, paths["2mm"], "up", _shift(dz=2 * demo_cfg.data.demo.slice_mm))
    real = loading.restore_for_run
    stored = _demo_run_config(demo_cfg)

    def restore(config, workdir):
        return real(config, workdir)._replace(config=stored)

    monkeypatch.setattr(loading, "restore_for_run", restore)
    cfg = default_config()  # this run's own config says nothing of the demo
    cfg.mode = "predict"
    cfg.image_size = 64
    cfg.checkpoint = fixture_ckpt
    cfg.sample.update(ddim_steps=2, batch_size=32)
    cfg.predict.update(input=s.image.path, brainmask=s.brainmask_path,
                       output=str(tmp_path / "out"))
    out = predict.run(cfg, str(tmp_path / "wd"))
    summary = json.loads(open(out["summary"]).read())
    assert summary["geometry"] == "mni_grid"
    assert summary["training_domain"]["source"] == "checkpoint"
    assert summary["preprocessing"]["grid"]["pixel_mm"] == pytest.approx(
        demo_cfg.data.demo.fov_mm / demo_cfg.image_size)
    err = capsys.readouterr().err
    # the out-of-distribution warnings (the missing calibration has its own line)
    lines = [ln for ln in err.splitlines()
             if ln.startswith("warning: ") and "calibration.json" not in ln]
    assert sum("no calibration.json" in ln for ln in err.splitlines()) == 1, err
    assert len(lines) == len(summary["warnings"]) == 1, err
    assert "outside the training z range" in lines[0]
    assert len(summary["slices_outside_training"]) >= 1
    amap = nib.load(out["anomaly"])
    src = nib.load(s.image.path)
    assert amap.shape == src.shape
    np.testing.assert_allclose(amap.affine, src.affine, atol=1e-5)
    data = np.asarray(amap.dataobj)
    brain = np.asarray(nib.load(s.brainmask_path).dataobj) > 0
    assert np.isfinite(data).all() and data[~brain].max() == 0.0
    assert (data[brain] > 0).mean() > 0.9


def test_grid_dataclasses_are_json(dom):
    grid = domain.training_grid(dom)
    assert grid.shape[2] == round((dom.z_mm[1] - dom.z_mm[0]) / dom.slice_mm) + 1
    json.dumps(dataclasses.asdict(grid))
    json.dumps(dom.to_dict())
