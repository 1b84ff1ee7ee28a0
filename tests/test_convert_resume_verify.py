"""A resumed conversion checks each finished shard before trusting it.

The progress file records every finished shard's record count, size and sha256; a shard
that was truncated or had bytes flipped since is rewritten (one log line), and the final
shard set is byte-identical to an uninterrupted conversion's.
"""

import json
import logging
import os

import pytest
from data_helpers import write_set

from madad_jax.data import convert, records
from madad_jax.data.errors import BadInputError
from madad_jax.data.pipeline import load_eval_split

KW = dict(modality="T2", image_size=16, split="train", policies="all",
          subjects_per_shard=1, bad_input="stop", progress=False)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _flip(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 4, len(data) // 4 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _stopped_conversion(tmp_path):
    """Two finished shards and a progress file: the third subject's image is corrupt."""
    write_set(tmp_path / "in", 4, seed=4)
    ref = tmp_path / "ref"
    convert.convert_nifti(tmp_path / "in", ref, **KW)
    image = tmp_path / "in" / "sub02-T2.nii.gz"
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    with pytest.raises(BadInputError):
        convert.convert_nifti(tmp_path / "in", out, **KW)
    image.write_bytes(good)
    return ref, out


@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "flipped"])
def test_damaged_finished_shard_is_rewritten_on_resume(tmp_path, caplog, damage):
    ref, out = _stopped_conversion(tmp_path)
    progress = json.loads((out / "train.progress.json").read_text())
    first = records.shard_name("train", 0, 4)
    second = records.shard_name("train", 1, 4)
    entry = progress["shards"][first]
    assert entry["size"] == os.path.getsize(out / first)
    assert entry["sha256"] == records.file_identity(out / first)["sha256"]
    assert entry["num_records"] == records.count_records(out / first)

    damage(out / first)
    kept = os.stat(out / second).st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="madad_jax.data"):
        convert.convert_nifti(tmp_path / "in", out, **KW)
    lines = [r.getMessage() for r in caplog.records if first in r.getMessage()]
    assert len(lines) == 1 and "rewriting" in lines[0], lines
    assert os.stat(out / second).st_mtime_ns == kept  # the intact shard was trusted
    for i in range(4):
        name = records.shard_name("train", i, 4)
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    got, want = (json.loads((d / "train.manifest.json").read_text()) for d in (out, ref))
    got.pop("fingerprint"), want.pop("fingerprint")  # it covers the inputs' mtimes
    assert got == want
    assert len(load_eval_split(out, "train")["names"]) > 0  # reading works


def test_damaged_shard_of_a_finished_set_is_converted_again(tmp_path, caplog):
    write_set(tmp_path / "in", 2, seed=5)
    out = tmp_path / "out"
    convert.convert_nifti(tmp_path / "in", out, **KW)
    name = records.shard_name("train", 1, 2)
    good = (out / name).read_bytes()
    _truncate(out / name)
    with caplog.at_level(logging.WARNING, logger="madad_jax.data"):
        convert.convert_nifti(tmp_path / "in", out, **KW)
    assert any(name in r.getMessage() for r in caplog.records)
    assert (out / name).read_bytes() == good
    assert len(load_eval_split(out, "train")["names"]) > 0


def test_shard_problem_names_what_changed(tmp_path):
    write_set(tmp_path / "in", 1, seed=6)
    convert.convert_nifti(tmp_path / "in", tmp_path / "out", **KW)
    path = tmp_path / "out" / records.shard_name("train", 0, 1)
    expected = {**records.file_identity(path), "num_records": records.count_records(path)}
    assert records.shard_problem(path, expected) is None
    assert "records" in records.shard_problem(path, {"num_records": 10**6})
    _flip(path)
    assert records.shard_problem(path, expected) == "checksum differs"
    _truncate(path)
    assert "size" in records.shard_problem(path, expected)
    assert "unreadable" in records.shard_problem(path, {"num_records": 1})
    assert records.shard_problem(tmp_path / "nope", expected) == "missing"
