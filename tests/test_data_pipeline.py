"""The grain training pipeline: batches, shuffling, sharding, state, workers, global arrays."""

import os

import grain
import jax
import numpy as np
import pytest
from data_helpers import write_set
from jax.sharding import NamedSharding, PartitionSpec

from madad_jax.config import default_config
from madad_jax.data import convert, pipeline, sources
from madad_jax.data.augment import AugmentOptions, augment_slice

SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    write_set(tmp / "in", 3, seed=0, lesions=False)
    convert.convert_nifti(tmp / "in", tmp / "out", modality="T2", image_size=SIZE, split="train",
                          policies="all", progress=False)
    return tmp / "out"


def _config(path, batch_size=4, **data):
    c = default_config()
    c.image_size = SIZE
    c.data.train_path = str(path)
    c.train.batch_size = batch_size
    c.data.update(data)
    return c


def _all(path):
    return pipeline.load_eval_split(path, "train")


def _epoch(path, **kw):
    ds = pipeline.make_dataset(path, 1, augment=False, repeat=False, **kw)
    return [b["image"][0] for b in ds]


def test_batches(dataset):
    it = pipeline.train_iterator(_config(dataset, augment=False), 0, 1)
    batch = next(it)
    assert set(batch) == {"image", "brainmask"}
    assert batch["image"].shape == (4, SIZE, SIZE, 1) and batch["image"].dtype == np.float32
    assert batch["brainmask"].shape == (4, SIZE, SIZE, 1) and batch["brainmask"].dtype == np.float32
    assert set(np.unique(batch["brainmask"])) <= {0.0, 1.0}
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert np.all(batch["image"][batch["brainmask"] == 0] == -1)


def _keys(images):
    return sorted(img.tobytes() for img in images)


def test_epochs_cover_every_slice_once_and_reshuffle(dataset):
    ref = _all(dataset)["images"]
    n = len(ref)
    ds = pipeline.make_dataset(dataset, 1, augment=False, seed=3)
    it = iter(ds)
    first = [next(it)["image"][0] for _ in range(n)]
    second = [next(it)["image"][0] for _ in range(n)]
    assert _keys(first) == _keys(ref) == _keys(second)
    assert [a.tobytes() for a in first] != [a.tobytes() for a in second]


def test_process_shards_are_disjoint_and_complete(dataset):
    ref = _all(dataset)["images"]
    parts = [_epoch(dataset, process_index=i, process_count=3) for i in range(3)]
    assert sum(len(p) for p in parts) == len(ref)
    assert _keys([x for p in parts for x in p]) == _keys(ref)
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.train_dataset(_config(dataset, batch_size=5), 0, 2)


def test_state_restores_the_exact_position(dataset):
    config = _config(dataset)
    it = pipeline.train_iterator(config, 0, 1)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    again = pipeline.train_iterator(config, 0, 1)
    again.set_state(state)
    for want in expected:
        got = next(again)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_augmentation(dataset):
    ref = _all(dataset)
    img, mask = ref["images"][20, :, :, 0], ref["brainmasks"][20]
    rng = np.random.default_rng(0)
    same = augment_slice(img, mask, rng, AugmentOptions(p=0.0))
    np.testing.assert_array_equal(same[0], img)
    only = dict(rotate_degrees=0.0, brightness=0.0, contrast=0.0)
    for seed in range(4):
        out, m = augment_slice(img, mask, np.random.default_rng(seed),
                               AugmentOptions(p=1.0, translate_px=2, **only))
        dy = np.argmax(m.any(1)) - np.argmax(mask.any(1))
        dx = np.argmax(m.any(0)) - np.argmax(mask.any(0))
        assert abs(dy) <= 2 and abs(dx) <= 2
        np.testing.assert_array_equal(out, np.roll(img, (dy, dx), (0, 1)))
    out, m = augment_slice(img, mask, np.random.default_rng(1),
                           AugmentOptions(p=1.0, rotate_degrees=5.0, translate_px=0,
                                          brightness=0.0, contrast=0.0))
    assert not np.array_equal(out, img) and abs(int(m.sum()) - int(mask.sum())) < 0.05 * mask.sum()
    assert np.all(out[m == 0] == -1)
    out, m = augment_slice(img, mask, np.random.default_rng(2),
                           AugmentOptions(p=1.0, rotate_degrees=0.0, translate_px=0,
                                          brightness=0.1, contrast=0.0))
    shift = (out - img)[(mask > 0) & (img > -0.7) & (img < 0.7)]
    assert np.ptp(shift) < 1e-5 and 0 < abs(shift[0]) <= 0.2 + 1e-6
    # In the pipeline: random but reproducible, and always re-masked.
    a = next(pipeline.train_iterator(_config(dataset, augment_p=1.0), 0, 1))
    b = next(pipeline.train_iterator(_config(dataset, augment_p=1.0), 0, 1))
    c = next(pipeline.train_iterator(_config(dataset, augment=False), 0, 1))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    assert np.all(a["image"][a["brainmask"] == 0] == -1)


class Probe(grain.transforms.Map):
    def map(self, x):
        import sys

        jax_mod = sys.modules.get("jax")
        initialized = False
        if jax_mod is not None:
            from jax._src import xla_bridge

            initialized = xla_bridge.backends_are_initialized()
        return np.array([os.getpid(), initialized, os.environ.get("JAX_PLATFORMS") == "cpu"])


def test_workers_keep_off_the_accelerator_and_match_in_process(dataset):
    ds = pipeline.prefetch(grain.MapDataset.range(4).map(Probe()).to_iter_dataset(), 2)
    it = iter(ds)
    rows = np.stack(list(it))
    it.close()
    assert len(set(rows[:, 0])) == 2 and os.getpid() not in rows[:, 0]
    assert not rows[:, 1].any() and rows[:, 2].all()

    plain = pipeline.train_iterator(_config(dataset), 0, 1)
    it = pipeline.train_iterator(_config(dataset, num_workers=2), 0, 1)
    for _ in range(3):
        want, got = next(plain), next(it)
        np.testing.assert_array_equal(got["image"], want["image"])
    state = it.get_state()
    nxt = next(it)
    it.close()
    again = pipeline.train_iterator(_config(dataset, num_workers=2), 0, 1)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["image"], nxt["image"])
    again.close()


@pytest.mark.parametrize("shape, names", [((4,), ("data",)), ((2, 2), ("data", "fsdp"))])
def test_global_batches_on_a_4_device_mesh(dataset, shape, names):
    assert jax.device_count() == 4
    mesh = jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
    batch = next(pipeline.train_iterator(_config(dataset, batch_size=8), 0, 1))
    glob = pipeline.make_global_batch(batch, mesh)
    for key in ("image", "brainmask"):
        arr = glob[key]
        assert isinstance(arr, jax.Array) and arr.shape == (8, SIZE, SIZE, 1)
        assert arr.sharding == NamedSharding(mesh, PartitionSpec(names))
        assert len(arr.addressable_shards) == 4
        for shard in arr.addressable_shards:
            assert shard.data.shape == (2, SIZE, SIZE, 1)
            np.testing.assert_array_equal(np.asarray(shard.data), batch[key][shard.index])
        np.testing.assert_array_equal(np.asarray(arr), batch[key])
    total = jax.jit(lambda b: (b["image"] * b["brainmask"]).sum())(glob)
    np.testing.assert_allclose(total, (batch["image"] * batch["brainmask"]).sum(), rtol=1e-5)


def test_eval_loading_from_config(case_dir, tmp_path):
    c = default_config()
    c.image_size = 64
    c.data.kind = "png"
    c.data.png_root = str(case_dir / "slices")
    png_split = sources.eval_slices(c, "test")
    convert.convert_png(case_dir / "slices", tmp_path, modality="T2", image_size=64,
                        progress=False)
    c.data.kind = "arrayrecord"
    c.data.png_root = ""
    c.data.test_path = str(tmp_path)
    ar = sources.eval_slices(c, "test")
    for k in ("images", "brainmasks", "segmentations"):
        np.testing.assert_array_equal(png_split[k], ar[k])
    assert png_split["names"] == ar["names"]


def test_bench_pipeline(dataset):
    for augment in (False, True):
        out = pipeline.bench_pipeline(dataset, 8, augment, 0.3)
        assert out["slices_per_s"] > 0 and out["batches"] >= 1 and out["augment"] is augment
