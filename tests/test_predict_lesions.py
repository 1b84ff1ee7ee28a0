"""Predict's lesion outputs at a calibrated threshold, for one scan and for a folder with a
corrupt scan, and the BIDS-derivatives layout."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
from test_predict import REPO, _config, _make_scan

from madad_jax.evaluation import bids, calibration, lesions, predict, predict_many


def _calibrate(folder, threshold=0.05):
    calibration.save(str(folder), {"threshold": threshold, "method": "healthy_fpr",
                                   "target_fpr": 0.01, "split": "val", "step": 0})
    return str(folder / "calibration.json")


def test_lesion_mask_of_a_known_volume():
    # a map with two blobs above the threshold: two components with known volumes
    vol = np.zeros((20, 20, 20), np.float32)
    vol[2:6, 2:6, 2:6] = 0.8
    vol[10:12, 10:12, 10:13] = 0.6
    brain = np.ones_like(vol, bool)
    mask = predict.lesion_mask(vol, brain, {"threshold": 0.5})
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    rows = lesions.components(mask, vol, affine)
    assert len(rows) == 2
    assert [r["volume_ml"] for r in rows] == [0.128, 0.024]  # 64 and 12 voxels of 2 mm^3
    assert predict.lesion_mask(vol, brain, {"threshold": 0.5}, min_voxels=20).sum() == 64


def test_single_scan_writes_mask_and_table(tmp_path, fixture_ckpt):
    s = _make_scan(tmp_path)
    out = tmp_path / "out"
    cfg = _config(fixture_ckpt, s["scan"], out)
    cfg.predict.calibration = _calibrate(tmp_path)
    paths = predict.run(cfg, str(tmp_path / "wd"))
    m = nib.load(paths["lesions"])
    src = nib.load(s["scan"])
    assert m.shape == src.shape and np.allclose(m.affine, src.affine, atol=1e-5)
    data = np.asarray(m.dataobj)
    assert set(np.unique(data)) <= {0, 1} and data[~s["brain"]].max() == 0
    table = json.loads(open(paths["lesions_json"]).read())
    assert table["threshold"] == 0.05 and table["num_lesions"] == len(table["lesions"])
    voxel_ml = abs(np.linalg.det(src.affine[:3, :3])) / 1000
    assert np.isclose(table["total_volume_ml"], data.sum() * voxel_ml)
    tsv = open(paths["lesions_tsv"]).read().splitlines()
    assert tsv[0].startswith("lesion\tvoxels\tvolume_ml") and len(tsv) == 1 + table["num_lesions"]
    # the interactive viewer: a self-contained nilearn page the scan's report links to
    viewer = open(paths["viewer"]).read()
    assert "brainsprite" in viewer.lower() and "<script src=\"http" not in viewer
    assert f"href='{os.path.basename(paths['viewer'])}'" in open(paths["report"]).read()


def _folder(tmp_path):
    data = tmp_path / "scans"
    data.mkdir()
    for name in ("sub-01_T1w", "sub-02_T1w"):
        d = tmp_path / name
        d.mkdir()
        s = _make_scan(d)
        os.replace(s["scan"], data / f"{name}.nii.gz")
        os.replace(d / "mask.nii.gz", data / f"{name}_brainmask.nii.gz")
    (data / "sub-03_T1w.nii.gz").write_bytes(b"not a nifti file")
    return data


def test_folder_with_a_corrupt_scan_through_main(tmp_path, fixture_ckpt):
    data = _folder(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "madad_jax.main", "--config=configs/demo.py",
           f"--workdir={tmp_path / 'wd'}", "--config.mode=predict", "--config.image_size=64",
           f"--config.checkpoint={fixture_ckpt}", "--config.sample.ddim_steps=2",
           f"--config.predict.input={data}", f"--config.predict.output={out}",
           f"--config.predict.calibration={_calibrate(tmp_path)}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "sub-03_T1w.nii.gz" in errors[0]
    assert "Traceback" not in proc.stderr
    for sub in ("sub-01_T1w", "sub-02_T1w"):
        for suffix in ("_anomaly.nii.gz", "_lesions.nii.gz", "_lesions.tsv", "_lesions.json"):
            assert (out / f"{sub}{suffix}").is_file()
    assert not any(p.name.startswith("sub-03") for p in out.iterdir())
    group = (out / "group.tsv").read_text().splitlines()
    assert len(group) == 4 and group[3].split("\t")[1] == "error"
    assert json.loads((out / "predict_args.json").read_text())["predict"]["input"] == str(data)


def test_bids_layout(tmp_path, fixture_ckpt):
    data = _folder(tmp_path)
    (data / "sub-03_T1w.nii.gz").unlink()
    out = tmp_path / "bids"
    cfg = _config(fixture_ckpt, str(data), out, layout="bids")
    cfg.predict.calibration = _calibrate(tmp_path)
    written = predict_many.run(cfg, str(tmp_path / "wd"))
    assert len(written) == 2
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"]
    anat = out / "sub-01" / "anat"
    names = sorted(p.name for p in anat.iterdir())
    assert names == ["sub-01_desc-madad_lesions.tsv", "sub-01_desc-madad_mask.json",
                     "sub-01_desc-madad_mask.nii.gz", "sub-01_desc-madad_probseg.json",
                     "sub-01_desc-madad_probseg.nii.gz"]
    side = json.loads((anat / "sub-01_desc-madad_mask.json").read_text())
    assert side["Type"] == "Lesion" and side["Threshold"] == 0.05
    assert side["RawSources"][0].endswith("sub-01_T1w.nii.gz")
    assert bids.entities("sub-01_ses-2_acq-mp_T1w") == ["sub-01", "ses-2", "acq-mp"]
    assert bids.entities("scan 7.nii")[0] == "sub-scan7nii"
