"""The per-volume protocol and the lesion-size breakdown, on volumes with known answers."""

import csv

import numpy as np
import pytest

from madad_jax.evaluation import metrics
from madad_jax.evaluation import volume_metrics as vm


def _ball(shape, centre, radius):
    grid = np.indices(shape)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return d2 <= radius**2


def _volume(name, lesion, brain=None, amap=None):
    shape = lesion.shape
    brain = np.ones(shape, bool) if brain is None else brain
    amap = lesion.astype(np.float32) if amap is None else amap
    return vm.VolumeMaps(name, amap.astype(np.float32), brain, lesion,
                         np.arange(shape[0]))


def test_perfect_map_gives_dice_one():
    shape = (20, 32, 32)
    brain = _ball(shape, (10, 16, 16), 15)
    lesion = _ball(shape, (10, 14, 17), 4)
    # without filtering, a perfect map is exactly the lesion
    v = _volume("s1", lesion, brain)
    res, rows = vm.volume_protocol([v], [v], erosion_iterations=0, median_size=1)
    assert res["dice"] == pytest.approx(1.0)
    assert res["auprc"] == pytest.approx(1.0)
    assert rows[0]["predicted_voxels"] == lesion.sum()
    # with the full protocol, a smooth lesion deep inside the brain survives nearly intact
    big = _ball(shape, (10, 16, 16), 6)
    v = _volume("s1", big, brain)
    res, _ = vm.volume_protocol([v], [v])
    assert res["dice"] > 0.85
    assert res["settings"]["median_size"] == 5
    assert res["settings"]["erosion_iterations"] == 3


def test_postprocess_removes_spikes_and_the_brain_border():
    shape = (9, 20, 20)
    brain = np.zeros(shape, bool)
    brain[:, 2:18, 2:18] = True
    amap = np.zeros(shape, np.float32)
    amap[4, 10, 10] = 5.0  # a lone spike: the median filter removes it
    amap[:, 2, 2:18] = 1.0  # a bright rim on the brain border: erosion removes it
    out = vm.postprocess_map(amap, brain)
    assert out.max() == 0.0
    # erosion is per slice: the first and last slices are not eroded away
    eroded = vm.postprocess_map(brain.astype(np.float32), brain, median_size=1)
    assert eroded[0].sum() == eroded[4].sum() == 10 * 10


def test_small_components_removed():
    vol = np.zeros((12, 12, 12), bool)
    vol[1, 1, 1:8] = True  # 7 voxels: removed
    vol[5, 5, 1:9] = True  # 8 voxels: kept
    vol[9, 9, 9] = vol[10, 10, 10] = True  # corner-touching pair (26-connected), 2 voxels
    out = vm.remove_small_components(vol)
    assert out.sum() == 8 and out[5, 5, 1:9].all()
    assert vm.remove_small_components(vol, max_removed=1).sum() == 17
    assert not vm.remove_small_components(np.zeros((3, 3, 3), bool)).any()


def test_threshold_chosen_on_val_and_applied_to_test():
    shape = (12, 24, 24)
    lesion = _ball(shape, (6, 12, 12), 4)
    brain = np.ones(shape, bool)
    val_map = np.where(lesion, 0.6, 0.2).astype(np.float32)
    val = _volume("val", lesion, brain, val_map)
    # test: lesion A at 0.5 (found with the val threshold), lesion B at 0.1 (missed)
    les_a = _ball(shape, (6, 6, 6), 3)
    les_b = _ball(shape, (6, 17, 17), 3)
    test_map = np.where(les_a, 0.5, np.where(les_b, 0.1, 0.0)).astype(np.float32)
    test = _volume("test", les_a | les_b, brain, test_map)
    res, rows = vm.volume_protocol([test], [val], erosion_iterations=0, median_size=1)
    assert 0.2 < res["threshold"] <= 0.5
    assert res["val_pooled_dice"] == pytest.approx(1.0)
    na, nb = int(les_a.sum()), int(les_b.sum())
    assert rows[0]["predicted_voxels"] == na
    assert rows[0]["dice"] == pytest.approx(2 * na / (2 * na + nb))
    # a given threshold overrides the validation search
    res2, rows2 = vm.volume_protocol([test], threshold=0.05, erosion_iterations=0, median_size=1)
    assert res2["threshold_source"] == "given" and rows2[0]["dice"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no lesion"):
        vm.volume_protocol([test], [_volume("h", np.zeros(shape, bool), brain, val_map)])


def test_pooled_dice_curve_matches_direct_computation():
    rng = np.random.default_rng(0)
    maps = [rng.random((3, 8, 8)), rng.random((2, 8, 8))]
    segs = [m > 0.7 for m in maps]
    segs[1][:] = False
    th = np.linspace(0, 1, 11)
    curve = vm.pooled_dice_curve(maps, segs, th)
    allm = np.concatenate([m.ravel() for m in maps])
    alls = np.concatenate([s.ravel() for s in segs])
    want = [vm.dice(allm >= t, alls) for t in th]
    np.testing.assert_allclose(curve, want)


def test_dice_and_auprc_edge_cases():
    z = np.zeros((2, 3, 3), bool)
    assert np.isnan(vm.dice(z, z))
    assert vm.dice(~z, z) == 0.0
    assert np.isnan(vm.auprc(np.ones(z.shape), z))


def test_size_bins_terciles_and_fixed():
    sizes = [0, 10, 20, 30, 40, 50, 60]
    a, b = vm.size_edges(sizes)
    assert (a, b) == pytest.approx(tuple(np.quantile([10, 20, 30, 40, 50, 60], [1 / 3, 2 / 3])))
    bins = [vm.size_bin(s, (a, b)) for s in sizes]
    assert bins == ["", "small", "small", "medium", "medium", "large", "large"]
    assert vm.size_edges(sizes, (15, 45)) == (15.0, 45.0)
    assert vm.size_bin(45, (15, 45)) == "large"


def test_slice_breakdown_matches_slice_metrics_on_each_bin():
    rng = np.random.default_rng(3)
    n = 9
    segs = np.zeros((n, 16, 16), np.int32)
    for i in range(1, n):  # slice 0 healthy; lesion side grows with i
        segs[i, 2 : 2 + i, 2 : 2 + i] = 1
    maps = np.clip(segs * 0.6 + rng.random(segs.shape) * 0.5, 0, 1).astype(np.float32)
    out = vm.slice_size_breakdown(maps, segs)
    sizes = segs.reshape(n, -1).sum(1)
    a, b = out["bins"]["edges"]
    assert out["small"]["n"] + out["medium"]["n"] + out["large"]["n"] == n - 1
    sel = np.flatnonzero(sizes >= b)
    want = metrics.slice_metrics(maps[sel], segs[sel])
    for k, v in want.items():
        assert out["large"][k] == pytest.approx(v)


def test_stack_volumes_orders_slices_and_groups_subjects():
    names = ["b-slice_2", "a-slice_5", "a-slice_3", "b-slice_1"]
    maps = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    data = {"names": names, "brainmasks": np.ones((4, 2, 2)),
            "segmentations": np.zeros((4, 2, 2), np.int32)}
    vols = vm.volumes_from_eval(data, maps)
    assert [v.name for v in vols] == ["a", "b"]
    assert vols[0].slice_indices.tolist() == [3, 5]
    assert vols[0].anomaly_map[:, 0, 0].tolist() == [2.0, 1.0]
    assert vols[1].anomaly_map[:, 0, 0].tolist() == [3.0, 0.0]


def test_volume_breakdown_and_csv(tmp_path):
    shape = (10, 20, 20)
    vols = []
    for i, r in enumerate([1, 2, 3, 4, 5, 6]):
        les = _ball(shape, (5, 10, 10), r)
        vols.append(_volume(f"s{i}", les))
    res, rows = vm.volume_protocol(vols, threshold=0.5, erosion_iterations=0, median_size=1)
    bins = res["by_lesion_size"]
    assert [bins[k]["n"] for k in vm.SIZE_BINS] == [2, 2, 2]
    assert bins["bins"]["unit"] == "lesion voxels per stacked volume"
    # the 1-voxel-radius ball (7 voxels) falls to the small-component rule
    assert rows[0]["lesion_voxels"] == 7 and rows[0]["dice"] == 0.0
    path = vm.write_csv(tmp_path / "per_volume.csv", rows)
    with open(path) as f:
        back = list(csv.DictReader(f))
    assert [r["subject"] for r in back] == [f"s{i}" for i in range(6)]
    assert float(back[5]["dice"]) == pytest.approx(1.0)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    srows = vm.slice_rows(["x-slice_1", "x-slice_2"], np.ones((2, 4, 4)) * 0.3,
                          np.ones((2, 4, 4)), threshold=0.2)
    assert srows[0]["dice"] == pytest.approx(1.0) and srows[0]["subject"] == "x"
