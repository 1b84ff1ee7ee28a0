"""Exact epochs (`data/epochs.py`): every slice once per epoch, a padded partial last batch."""

import numpy as np
import pytest
from train_helpers import make_slices, write_shards

from madad_jax.config import default_config
from madad_jax.data import pipeline, records
from madad_jax.data.epochs import ExactEpochBatches, steps_in_epoch

SIZE = 16
N = 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """N slices (unique images) in one shard, and the same slices as decoded arrays."""
    data = make_slices(N, SIZE, seed=0)
    path = write_shards(data, str(tmp_path_factory.mktemp("epochs") / "train-00000-of-00001"))
    return path, pipeline.load_eval_split(path, "train")


def _batches(path, batch_size, n, **kw):
    kw.setdefault("augment", False)
    it = iter(pipeline.make_dataset(path, batch_size, exact_epochs=True, **kw))
    return [next(it) for _ in range(n)]


def _index(all_slices):
    return {img.tobytes(): i for i, img in enumerate(all_slices["images"])}


def _ids(batch, index):
    return [index[img.tobytes()] for img in batch["image"]]


def test_each_slice_once_per_epoch_and_reshuffled(shards):
    path, every = shards
    index = _index(every)
    steps = pipeline.steps_per_epoch(path, 4)
    assert steps == steps_in_epoch(N, 4) == 3
    batches = _batches(path, 4, 3 * steps, seed=3)
    orders = []
    for e in range(3):
        order = []
        for b in batches[e * steps:(e + 1) * steps]:
            order += [i for i, w in zip(_ids(b, index), b["weight"], strict=True) if w == 1]
        assert sorted(order) == list(range(N))
        orders.append(order)
    assert orders[0] != orders[1] != orders[2] != orders[0]
    # The permutation is a function of (seed, epoch): another seed, another order.
    other = _batches(path, 4, steps, seed=4)
    assert [_ids(b, index) for b in other] != [_ids(b, index) for b in batches[:steps]]


def test_last_batch_partial_and_padded_with_zero_weight(shards):
    path, every = shards
    index = _index(every)
    batches = _batches(path, 4, 6, seed=0)
    weights = [b["weight"].tolist() for b in batches]
    assert weights == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]] * 2
    for b in batches:
        assert b["weight"].dtype == np.float32
        assert b["image"].shape == (4, SIZE, SIZE, 1)
        assert b["brainmask"].shape == (4, SIZE, SIZE, 1)
        assert set(b) == {"image", "brainmask", "weight"}
    last = _ids(batches[2], index)
    assert last[2] == last[3] == last[0]  # padding copies a real slice of the batch


def test_divisible_batch_has_no_padding(shards):
    path, every = shards
    index = _index(every)
    assert pipeline.steps_per_epoch(path, 5) == 2
    batches = _batches(path, 5, 4, seed=1)
    assert all(b["weight"].tolist() == [1.0] * 5 for b in batches)
    for e in range(2):
        ids = _ids(batches[2 * e], index) + _ids(batches[2 * e + 1], index)
        assert sorted(ids) == list(range(N))


def test_one_epoch_in_order_without_shuffle_or_repeat(shards):
    path, every = shards
    ds = pipeline.make_dataset(path, 4, augment=False, shuffle=False, repeat=False,
                               exact_epochs=True)
    batches = list(ds)
    assert len(batches) == 3
    index = _index(every)
    assert [_ids(b, index) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 8, 8]]


def _config(seed=7):
    c = default_config()
    c.image_size = SIZE
    c.data.shuffle_seed = seed
    c.data.augment = True
    c.data.augment_p = 0.9
    c.data.num_workers = 0
    return c


def test_process_shares_are_disjoint_and_cover_the_global_batch(shards):
    path, _ = shards
    d = _config().data

    def take(pi, pc, n=6):
        it = iter(pipeline.batches_of(path, d, 4, process_index=pi, process_count=pc,
                                      exact_epochs=True))
        return [next(it) for _ in range(n)]

    whole, p0, p1 = take(0, 1), take(0, 2), take(1, 2)
    for g, a, b in zip(whole, p0, p1, strict=True):
        for k in ("image", "brainmask", "weight"):
            assert a[k].shape[0] == b[k].shape[0] == 2
            # Augmentation draws depend on (seed, epoch, slice), not on the process layout.
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), g[k])
    # Process 1 holds only padding in the last batch of each epoch.
    assert p1[2]["weight"].tolist() == [0.0, 0.0]


def test_augmentation_skips_padding_and_is_deterministic(shards):
    path, every = shards
    index = _index(every)
    plain = _batches(path, 4, 3, seed=5)
    aug = _batches(path, 4, 3, seed=5, augment=True,
                   augment_opts=pipeline.augment_options({"augment_p": 1.0}))
    again = _batches(path, 4, 3, seed=5, augment=True,
                     augment_opts=pipeline.augment_options({"augment_p": 1.0}))
    for a, b in zip(aug, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    for p, a in zip(plain, aug, strict=True):
        real = p["weight"] == 1
        assert not np.array_equal(p["image"][real], a["image"][real])
        np.testing.assert_array_equal(p["image"][~real], a["image"][~real])
    pad = _ids(plain[2], index)[3]
    np.testing.assert_array_equal(aug[2]["image"][3], every["images"][pad])


def test_resume_from_state_is_identical(shards):
    path, _ = shards
    d = _config(seed=11).data
    it = iter(pipeline.batches_of(path, d, 4, process_index=0, process_count=1,
                                  exact_epochs=True))
    for _ in range(2):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(5)]  # crosses the end of epoch 0
    fresh = iter(pipeline.batches_of(path, d, 4, process_index=0, process_count=1,
                                     exact_epochs=True))
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_latent_cache_batches(tmp_path):
    rng = np.random.default_rng(0)
    n, h = 7, SIZE // 2
    means = rng.standard_normal((n, h, h, 4)).astype(np.float32)
    logvars = rng.standard_normal((n, h, h, 4)).astype(np.float32)
    data = make_slices(n, SIZE, seed=1)
    rows = ({"image": data["image"][i, ..., 0], "brainmask": np.ones((SIZE, SIZE), np.uint8),
             "name": f"s{i}", "latent_mean": means[i], "latent_logvar": logvars[i]}
            for i in range(n))
    path = str(tmp_path / "train-00000-of-00001")
    records.write_shard(path, rows)
    d = _config().data
    it = iter(pipeline.batches_of(path, d, 4, latents=True, process_index=0, process_count=1,
                                  exact_epochs=True))
    assert pipeline.steps_per_epoch(path, 4) == 2
    seen = []
    for step in range(2):
        b = next(it)
        assert set(b) == {"image", "brainmask", "latent_mean", "latent_logvar", "weight"}
        assert b["latent_mean"].shape == (4, h, h, 4)
        assert b["weight"].tolist() == ([1.0] * 4 if step == 0 else [1.0] * 3 + [0.0])
        for m, lv, img, w in zip(b["latent_mean"], b["latent_logvar"], b["image"], b["weight"],
                                 strict=True):
            i = int(np.flatnonzero((means == m).all(axis=(1, 2, 3)))[0])
            np.testing.assert_array_equal(lv, logvars[i])
            np.testing.assert_array_equal(img[..., 0], data["image"][i, ..., 0])  # no augment
            if w:
                seen.append(i)
    assert sorted(seen) == list(range(n))


def test_default_pipeline_has_no_weight(shards):
    path, _ = shards
    batch = next(iter(pipeline.make_dataset(path, 4, augment=False)))
    assert set(batch) == {"image", "brainmask"}


def test_rejects_indivisible_batch_and_bad_process(shards):
    path, _ = shards
    source, _ = pipeline.open_source(path)
    decode = pipeline.DecodeTrain()
    with pytest.raises(ValueError, match="divisible"):
        ExactEpochBatches(source, 5, decode=decode, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        ExactEpochBatches(source, 4, decode=decode, process_index=2, process_count=2)
    ds = ExactEpochBatches(source, 4, decode=decode, num_epochs=2)
    assert len(ds) == 6 and ds.steps_per_epoch == 3
    with pytest.raises(IndexError):
        ds[6]
