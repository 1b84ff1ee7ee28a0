"""core.files: atomic writes leave the old file or the new one, never a partial or temp file;
to_json cleans numpy values and non-finite floats. And the inferencer cache keys by value."""

import json
import os
import stat

import numpy as np
import pytest

from madad_jax.core import files


def test_to_json_cleans_numpy_tuples_and_non_finite():
    x = {1: (np.float32(0.5), np.int64(3)), "a": np.array([[1, 2]]), "n": float("nan"),
         "i": [np.float64("inf"), None, "s", True]}
    assert files.to_json(x) == {"1": [0.5, 3], "a": [[1, 2]], "n": None,
                                "i": [None, None, "s", True]}
    json.dumps(files.to_json(x), allow_nan=False)


def test_atomic_write_replaces_with_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"
    files.write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=1, sort_keys=True) + "\n"
    files.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(path.parent) == ["out.json"]


def test_atomic_path_failure_leaves_the_old_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_path(path, suffix=".png") as tmp:
        assert tmp.endswith(".png") and ".tmp-" in os.path.basename(tmp)
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.png"]


def test_atomic_directory(tmp_path):
    out = tmp_path / "ckpt"
    with files.atomic_path(out, directory=True) as tmp:
        (open(os.path.join(tmp, "f"), "w")).close()
    assert os.listdir(out) == ["f"]
    with pytest.raises(ValueError), files.atomic_path(tmp_path / "other", directory=True):
        raise ValueError
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_inferencer_is_shared_by_equal_models_and_settings():
    from madad_jax.config import default_config
    from madad_jax.sampling import inferencer, loading

    c = default_config()
    a = inferencer.inferencer(c, loading.build_models(c))
    assert inferencer.inferencer(c, loading.build_models(c)) is a  # equal, not identical
    c.sample.eta = float(c.sample.eta) + 0.25
    assert inferencer.inferencer(c, loading.build_models(c)) is not a
