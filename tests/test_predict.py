"""Predict mode: a NIfTI scan in, its anomaly map out in the same voxel grid; bad input refused."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from madad_jax.config import default_config
from madad_jax.data import nifti
from madad_jax.data.errors import BadInputError
from madad_jax.evaluation import figures, predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (40, 48, 36)


def _affine():
    """Oblique, permuted and flipped axes, anisotropic voxels."""
    a = np.eye(4)
    rot = Rotation.from_euler("xyz", [15, -10, 25], degrees=True).as_matrix()
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, 1, 0]], float)
    a[:3, :3] = rot @ perm @ np.diag([1.2, 1.0, 1.5])
    a[:3, 3] = [30.0, -40.0, 12.0]
    return a


def _save(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), _affine() if affine is None else affine), path)
    return str(path)


def _make_scan(folder):
    rng = np.random.default_rng(0)
    g = np.indices(SHAPE).astype(float)
    c = (np.array(SHAPE) / 2)[:, None, None, None]
    r = np.sqrt((((g - c) / (np.array(SHAPE)[:, None, None, None] * 0.42)) ** 2).sum(0))
    brain = r < 1
    img = 100 + 40 * np.cos(g[0] / 3) * np.sin(g[1] / 4) + rng.normal(0, 3, SHAPE)
    img = np.where(brain, img, 0).astype(np.float32)
    lesion = (((g[0] - 24) ** 2 + (g[1] - 20) ** 2 + (g[2] - 18) ** 2) < 16) & brain
    img[lesion] = 220
    return {
        "scan": _save(folder / "scan.nii.gz", img),
        "mask": _save(folder / "mask.nii.gz", brain.astype(np.uint8)),
        "seg": _save(folder / "seg.nii.gz", lesion.astype(np.uint8)),
        "brain": brain,
        "image": img,
    }


def _config(ckpt, scan, out, **predict_kw):
    c = default_config()
    c.mode = "predict"
    c.image_size = 64
    c.checkpoint = ckpt
    c.sample.update(ddim_steps=2, batch_size=16, sigma=1.25)
    c.predict.update(input=scan, output=str(out), **predict_kw)
    return c


def test_predict_round_trip(tmp_path, fixture_ckpt):
    s = _make_scan(tmp_path)
    out = tmp_path / "out"
    paths = predict.run(_config(fixture_ckpt, s["scan"], out, segmentation=s["seg"]),
                        str(tmp_path / "wd"))
    amap = nib.load(paths["anomaly"])
    src = nib.load(s["scan"])
    assert amap.shape == SHAPE
    np.testing.assert_allclose(amap.affine, src.affine, atol=1e-5)
    data = np.asarray(amap.dataobj)
    assert amap.get_data_dtype() == np.float32
    assert np.isfinite(data).all()
    assert data[~s["brain"]].max() == 0.0  # no mask given: the nonzero voxels are the brain
    assert (data[s["brain"]] > 0).mean() > 0.9 and data.max() <= 1.0
    for kind in ("panels", "overlay"):
        with open(paths[kind], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(open(paths["summary"]).read())
    assert summary["num_slices"] > 20 and summary["step"] == 0
    # nothing recorded about the training data: the converter's geometry, nothing to warn of
    assert summary["geometry"] == "pad" and summary["warnings"] == []
    assert 0.0 <= summary["voxel_auroc"] <= 1.0
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths.values())


def test_geometry_round_trip_with_an_identity_model(tmp_path):
    """With the normalized input itself as the "map", the output equals the normalized scan
    in the input's own grid: resize, padding, rotation and reorientation are all undone."""
    s = _make_scan(tmp_path)
    subject = nifti.load_subject("scan", s["scan"], s["mask"])
    cfg = default_config()
    cfg.image_size = 64
    opts = predict.slice_options(cfg)

    def identity(images):
        return {"anomaly_map": (images[..., 0] + 1.0) / 2.0, "sample": images}

    pred = predict.predict_subject(subject, opts, identity)
    brain = s["brain"]
    lo, hi = np.percentile(s["image"][brain], [0.5, 99.5])
    want = np.clip((s["image"] - lo) / (hi - lo), 0, 1)
    inner = brain & (np.abs(np.indices(SHAPE) - (np.array(SHAPE) / 2)[:, None, None, None])
                     .max(0) < 8)
    err = np.abs(pred.volume - want)[inner]
    assert np.median(err) < 0.02
    assert np.corrcoef(pred.volume[brain], want[brain])[0, 1] > 0.9
    assert pred.volume[~brain].max() == 0.0
    # the PNG writer leaves nothing behind when a later step fails
    out = tmp_path / "atomic"

    def broken(*a, **k):
        raise RuntimeError("disk full")

    real = figures.overlay
    figures.overlay = broken
    try:
        with pytest.raises(RuntimeError):
            predict.write_outputs(str(out), "scan", subject, pred, {})
    finally:
        figures.overlay = real
    assert not out.exists()


def _bad_inputs(folder):
    s = _make_scan(folder)
    img = nib.load(s["scan"]).get_fdata().astype(np.float32)
    nan = img.copy()
    nan[20, 20, 20] = np.nan
    corrupt = folder / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 not a real gzip stream at all" * 10)
    other = _affine()
    other[:3, 3] += 5.0
    return s, {
        "missing": ([f"--config.predict.input={folder / 'absent.nii.gz'}"], "file not found"),
        "corrupt": ([f"--config.predict.input={corrupt}"], "not a readable NIfTI"),
        "4d": ([f"--config.predict.input={_save(folder / 'f4.nii.gz', np.stack([img] * 2, -1))}"],
               "expected a 3D volume"),
        "2d": ([f"--config.predict.input={_save(folder / 'f2.nii.gz', img[:, :, 0])}"],
               "expected a 3D volume"),
        "nan": ([f"--config.predict.input={_save(folder / 'nan.nii.gz', nan)}"], "NaN/Inf"),
        "empty_mask": ([f"--config.predict.input={s['scan']}",
                        f"--config.predict.brainmask="
                        f"{_save(folder / 'em.nii.gz', np.zeros(SHAPE, np.uint8))}"],
                       "empty brain mask"),
        "mask_shape": ([f"--config.predict.input={s['scan']}",
                        f"--config.predict.brainmask="
                        f"{_save(folder / 'ms.nii.gz', np.ones((40, 48, 35), np.uint8))}"],
                       "shape"),
        "seg_affine": ([f"--config.predict.input={s['scan']}",
                        f"--config.predict.segmentation="
                        f"{_save(folder / 'sa.nii.gz', np.ones(SHAPE, np.uint8), other)}"],
                       "affine differs"),
    }


@pytest.mark.parametrize("case", ["missing", "nan", "seg_affine"])
def test_bad_input_through_main(tmp_path, fixture_ckpt, case):
    _, cases = _bad_inputs(tmp_path)
    args, problem = cases[case]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "madad_jax.main", "--config=configs/demo.py",
           f"--workdir={tmp_path / 'wd'}", "--config.mode=predict",
           f"--config.checkpoint={fixture_ckpt}", f"--config.predict.output={out}", *args]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert problem in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.parametrize("case", ["corrupt", "4d", "2d", "empty_mask", "mask_shape"])
def test_bad_input_raises_bad_input_error(tmp_path, fixture_ckpt, case):
    _, cases = _bad_inputs(tmp_path)
    args, problem = cases[case]
    kw = dict(a.removeprefix("--config.predict.").split("=", 1) for a in args)
    out = tmp_path / "out"
    cfg = _config(fixture_ckpt, kw.pop("input"), out, **kw)
    with pytest.raises(BadInputError, match=problem) as err:
        predict.run(cfg, str(tmp_path / "wd"))
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_missing_checkpoint_is_reported(tmp_path):
    s = _make_scan(tmp_path)
    cfg = _config("", s["scan"], tmp_path / "out")
    with pytest.raises(BadInputError, match="no checkpoint"):
        predict.run(cfg, str(tmp_path))  # an empty workdir, no --config.checkpoint
    assert not (tmp_path / "out").exists()


def test_scan_stem():
    assert predict.scan_stem("/a/sub-01_T1w.nii.gz") == "sub-01_T1w"
    assert predict.scan_stem("b/x.nii") == "x"
    assert predict.scan_stem("y.img") == "y"
