"""Issue 20's metrics on shapes whose answer is known: components, HD95, detection,
healthy-FPR calibration, bootstrap intervals, the model card."""

import json

import numpy as np
import pytest

from madad_jax.evaluation import bootstrap, calibration, lesions, results


def _cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


def test_components_volumes_centroids_and_boxes():
    shape = (30, 30, 30)
    mask = _cube(shape, (2, 2, 2), (12, 12, 12)) | _cube(shape, (20, 20, 20), (24, 24, 24))
    scores = mask * 0.5
    scores[5, 5, 5] = 0.9
    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = [-10, 20, 0]
    rows = lesions.components(mask, scores, affine)
    assert [r["voxels"] for r in rows] == [1000, 64]
    assert rows[0]["volume_ml"] == pytest.approx(1000 * 3.0 / 1000)
    assert rows[1]["volume_ml"] == pytest.approx(64 * 3.0 / 1000)
    # centre voxel 6.5 -> world 2*6.5-10, 6.5+20, 1.5*6.5
    assert (rows[0]["centroid_x_mm"], rows[0]["centroid_y_mm"], rows[0]["centroid_z_mm"]) == (
        pytest.approx(3.0), pytest.approx(26.5), pytest.approx(9.75))
    assert rows[0]["peak_score"] == pytest.approx(0.9)
    assert rows[1]["mean_score"] == pytest.approx(0.5)
    assert rows[0]["bbox_min"] == [2, 2, 2] and rows[0]["bbox_max"] == [11, 11, 11]
    assert [r["lesion"] for r in rows] == [1, 2]
    tsv = lesions.table_tsv(rows).splitlines()
    assert tsv[0].split("\t") == list(lesions.COLUMNS) and len(tsv) == 3
    assert lesions.components(np.zeros(shape, bool), scores, affine) == []
    assert lesions.remove_small(mask, 100).sum() == 1000


def test_hd95_of_shifted_cubes_in_mm():
    a = _cube((30, 30, 30), (5, 5, 5), (15, 15, 15))
    b = _cube((30, 30, 30), (8, 5, 5), (18, 15, 15))  # shifted 3 voxels along axis 0
    assert lesions.hd95(a, a, (2, 1, 1)) == 0.0
    assert lesions.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert lesions.hd95(a, b) == pytest.approx(3.0)
    assert np.isnan(lesions.hd95(a, np.zeros_like(a)))


def test_lesion_detection_counts():
    shape = (20, 20, 20)
    gt = _cube(shape, (1, 1, 1), (4, 4, 4)) | _cube(shape, (10, 10, 10), (13, 13, 13))
    pred = _cube(shape, (2, 2, 2), (5, 5, 5)) | _cube(shape, (16, 16, 16), (18, 18, 18))
    d = lesions.detection(pred, gt)
    assert d["gt_lesions"] == 2 and d["pred_lesions"] == 2 and d["detected_lesions"] == 1
    assert d["false_positive_lesions"] == 1
    assert d["lesion_sensitivity"] == 0.5 and d["lesion_precision"] == 0.5
    assert d["lesion_f1"] == pytest.approx(0.5)


def _split(n=12, size=16, seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.uniform(0, 0.5, (n, size, size)).astype(np.float32)
    brain = np.zeros((n, size, size), bool)
    brain[:, 2:-2, 2:-2] = True
    segs = np.zeros_like(brain)
    segs[: n // 2, 5:9, 5:9] = True
    maps[segs] += 0.5
    names = [f"s{i:02d}-slice_{40 + i % 3}" for i in range(n)]
    return {"images": maps[..., None], "brainmasks": brain, "segmentations": segs,
            "names": names}, maps * brain


def test_healthy_fpr_calibration_hits_its_target():
    data, maps = _split(n=40, size=32)
    rec = calibration.calibrate("healthy_fpr", maps, data["brainmasks"],
                                data["segmentations"], target_fpr=0.05)
    assert rec["achieved_fpr"] == pytest.approx(0.05, abs=0.002)
    assert rec["healthy_voxels"] == int((data["brainmasks"] & ~data["segmentations"]).sum())
    rec_p = calibration.calibrate("percentile", maps, data["brainmasks"], None, percentile=90)
    assert rec_p["method"] == "percentile" and rec_p["threshold"] < rec["threshold"] + 1
    cal, rows = calibration.calibrated_metrics(data, maps, rec, spacing=(3.0, 2.0, 2.0))
    assert cal["recall"] == 1.0 and cal["fpr"] == pytest.approx(0.05, abs=0.02)
    assert cal["per_volume"]["num_volumes"] == 40 and cal["per_volume"]["hd95_units"] == "mm"
    assert len(rows) == 40 and {"hd95", "tpr", "fpr", "dice"} <= set(rows[0])
    with pytest.raises(ValueError, match="evaluate.threshold"):
        calibration.threshold_for(np.ones(3), "nope")


def test_calibration_file_round_trip_and_bad_file(tmp_path):
    calibration.save(str(tmp_path), {"threshold": 0.25, "method": "healthy_fpr"})
    assert calibration.find(["", str(tmp_path)]) == str(tmp_path / "calibration.json")
    assert calibration.load(str(tmp_path / "calibration.json"))["threshold"] == 0.25
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        calibration.load(str(bad))


def test_bootstrap_intervals_bracket_the_estimate():
    data, maps = _split(n=24)
    subjects = [n.split("-slice_")[0] for n in data["names"]]
    iv = bootstrap.slice_intervals(maps, data["segmentations"], subjects, 50, 20)
    assert set(iv) == {"max_dice", "auroc", "ap"}
    assert iv["max_dice"]["low"] <= iv["max_dice"]["high"] <= 1.0
    assert iv["max_dice"]["n_subjects"] == 24
    rows = [{"subject": s, "dice": float(i % 2)} for i, s in enumerate(subjects)]
    m = bootstrap.mean_intervals(rows, ("dice",), 100)
    assert 0.0 <= m["dice"]["low"] < 0.5 < m["dice"]["high"] <= 1.0


def test_detection_needs_both_classes():
    data, maps = _split(n=10)
    det = results.detection(data, maps, 0.99)
    assert det["slice"]["auroc"] == 1.0 and det["slice"]["n_with_lesion"] == 5
    lesioned = {**data, "segmentations": np.ones_like(data["segmentations"])}
    assert results.detection(lesioned, maps, 0.99)["slice"]["auroc"] is None


def test_healthy_test_units_join_detection_and_measure_the_fpr():
    data, maps = _split(n=10)
    lesioned = {**data, "segmentations": np.ones_like(data["segmentations"])}
    # healthy units: flat low maps, so every lesioned unit outranks them
    healthy = {"brainmasks": data["brainmasks"][:4], "names": [f"h{i}-slice_0" for i in range(4)]}
    low = np.full_like(maps[:4], -1.0)
    det = results.detection(lesioned, maps, 0.99, (healthy, low))
    assert det["slice"]["n"] == 14 and det["slice"]["n_with_lesion"] == 10
    assert det["slice"]["auroc"] == 1.0 and det["volume"]["auroc"] == 1.0
    h = low.copy()
    brain = healthy["brainmasks"] > 0
    first = np.argwhere(brain[0])[:3]
    h[0][tuple(first.T)] = 5.0  # 3 flagged voxels in the first unit only
    fpr = results.healthy_test_fpr(healthy, h, 0.0)
    assert fpr["n_units"] == 4 and fpr["units_with_a_flag"] == 0.25
    assert fpr["fpr"] == pytest.approx(3 / brain.sum())


def test_demo_healthy_test_split_one_slice_per_subject():
    from madad_jax.config import default_config
    from madad_jax.data import sources

    c = default_config()
    c.data.kind = "demo"
    c.image_size = 32
    c.data.demo.update(n_test_healthy=3)
    a = sources.eval_slices(c, "test_healthy")
    assert a["segmentations"] is None and len(a["images"]) == 3
    assert len({n.split("-slice_")[0] for n in a["names"]}) == 3
    assert all(m.sum() > 0 for m in a["brainmasks"])
    b = sources.eval_slices(c, "test_healthy")
    np.testing.assert_array_equal(a["images"], b["images"])
    c.data.demo.update(n_test_healthy=0)
    assert sources.eval_slices(c, "test_healthy") is None


def test_model_card(tmp_path):
    from madad_jax.config import default_config

    c = default_config()
    res = {"max_dice": 0.5, "calibrated": {"dice": 0.4, "calibration": {
        "threshold": 0.3, "method": "healthy_fpr", "split": "val", "healthy_voxels": 10,
        "achieved_fpr": 0.01, "target_fpr": 0.01}}}
    card = results.model_card(c, res, "/ck", 7)
    results.write_card(str(tmp_path), card)
    assert "healthy_fpr" in (tmp_path / "MODEL_CARD.md").read_text()
    assert json.loads((tmp_path / "model_card.json").read_text())["step"] == 7
