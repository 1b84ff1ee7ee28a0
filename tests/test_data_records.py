"""Record codec, atomic shard files, manifests and split files."""

import os

import numpy as np
import pytest

from madad_jax.data import records
from madad_jax.data.errors import BadInputError, apply_policy
from madad_jax.data.splits import load_or_make_splits, make_splits, parse_fractions


def test_codec_round_trip():
    rng = np.random.default_rng(0)
    example = {
        "image": rng.standard_normal((5, 7)).astype(np.float32),
        "mask": (rng.random((5, 7)) > 0.5).astype(np.uint8),
        "affine": rng.standard_normal((4, 4)),
        "big": np.arange(6, dtype=">i8").reshape(2, 3),
        "empty": np.zeros((0, 3), np.int16),
        "name": "sub-01_slice_3 é",
        "index": np.int64(3),
        "flag": True,
        "none": None,
        "nested": {"a": [1, 2.5, "x"], "b": np.ones(2, np.float16)},
    }
    back = records.decode_record(records.encode_record(example))
    for k in ("image", "mask", "affine", "big", "empty"):
        assert back[k].dtype == example[k].dtype and back[k].shape == example[k].shape
        np.testing.assert_array_equal(back[k], example[k])
        assert back[k].flags.writeable
    assert back["name"] == example["name"] and back["index"] == 3 and back["flag"] is True
    assert back["none"] is None and back["nested"]["a"] == [1, 2.5, "x"]
    np.testing.assert_array_equal(back["nested"]["b"], np.ones(2, np.float16))


def test_shard_writer_is_atomic(tmp_path):
    path = tmp_path / records.shard_name("train", 0, 1)
    with pytest.raises(RuntimeError, match="crash"):
        with records.ShardWriter(path) as w:
            w.write({"x": np.ones(3)})
            assert any(".tmp-" in n for n in os.listdir(tmp_path))
            assert not path.exists()
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []
    assert records.write_shard(path, [{"i": i} for i in range(5)]) == 5
    assert os.listdir(tmp_path) == [path.name]
    assert [r["i"] for r in records.read_shard(path)] == list(range(5))
    assert records.count_records(path) == 5


def test_resolve_shards(tmp_path):
    for i in range(2):
        records.write_shard(tmp_path / records.shard_name("val", i, 2), [{"i": i}])
    (tmp_path / "val.array_record-00002-of-00002.tmp-123").write_bytes(b"partial")
    files, manifest = records.resolve_shards(str(tmp_path / "val.array_record-*"))
    assert [os.path.basename(f) for f in files] == [records.shard_name("val", i, 2)
                                                    for i in range(2)]
    assert manifest is None
    with pytest.raises(BadInputError, match="no val.manifest.json"):
        records.resolve_shards(tmp_path, "val")
    manifest = {"format": records.FORMAT, "split": "val",
                "shards": [{"file": records.shard_name("val", i, 2), "num_records": 1}
                           for i in range(2)]}
    records.write_json_atomic(tmp_path / "val.manifest.json", manifest)
    files, m = records.resolve_shards(tmp_path, "val")
    assert len(files) == 2 and m["split"] == "val"
    os.remove(files[1])
    with pytest.raises(BadInputError, match="shard listed in the manifest is missing"):
        records.resolve_shards(tmp_path, "val")
    with pytest.raises(BadInputError, match="no shard files match"):
        records.resolve_shards(str(tmp_path / "nothing-*"))


def test_policy_helper(caplog):
    def bad():
        raise BadInputError("/x/y.nii", "broken\nheader")

    assert str(BadInputError("/x/y.nii", "broken\nheader")) == "/x/y.nii: broken header"
    with pytest.raises(BadInputError):
        apply_policy(bad, "stop")
    assert apply_policy(bad, "skip") is None
    assert "/x/y.nii: broken header" in caplog.text
    with pytest.raises(ValueError, match="bad_input policy"):
        apply_policy(bad, "ignore")


def test_splits(tmp_path):
    subjects = [f"s{i:02d}" for i in range(11)]
    fr = parse_fractions("train=0.8,val=0.1,test=0.1")
    a = make_splits(subjects, fr, seed=1)
    assert [len(a[k]) for k in ("train", "val", "test")] == [9, 1, 1]
    assert sorted(sum(a.values(), [])) == subjects
    assert make_splits(subjects, fr, seed=1) == a != make_splits(subjects, fr, seed=2)
    path = tmp_path / "splits.json"
    first = load_or_make_splits(path, subjects, fr, seed=1)
    assert first == a and load_or_make_splits(path, subjects[:5], fr, seed=7) == a
    with pytest.raises(BadInputError, match="1 subject\\(s\\) are not in this split file"):
        load_or_make_splits(path, [*subjects, "new"], fr)
    path.write_text('{"splits": {"train": ["a", "b"], "test": ["b"]}}')
    with pytest.raises(BadInputError, match="subject b is in both train and test"):
        load_or_make_splits(path, ["a"], fr)
    path.write_text("{not json")
    with pytest.raises(BadInputError, match="unreadable split file"):
        load_or_make_splits(path, ["a"], fr)
